"""Model cards: each shipped model's card.md, its training data and its limitations (reads JSON only)."""

from __future__ import annotations

import re

import streamlit as st

from pages.common import get_catalog, require_app_entry
from pneumo_core.artifacts import CARD_FILE

require_app_entry()  # Before anything is drawn: pages are reached through app.py only.

st.title("Model cards")
entries = get_catalog()
populations = {entry.config.population for entry in entries if entry.shipped}
st.warning(
    "None of these models is a medical device. "
    + " ".join(
        f"They were trained on {population.summary} ({population.description}) and have not been validated "
        f"on {population.not_validated_on}."
        for population in sorted(populations, key=lambda population: population.summary)
    )
)

for entry in entries:
    with st.expander(f"{entry.name}: {entry.spec.description}", expanded=entry.shipped or entry.refused):
        if entry.refused:
            st.error(entry.refused_reason)
            continue
        if not entry.shipped:
            st.info(entry.unavailable_reason)
            continue
        # The card is a standalone Markdown file; nested in the page its headings sit below the title.
        st.markdown(re.sub(r"^(#+) ", r"\1## ", (entry.directory / CARD_FILE).read_text(), flags=re.MULTILINE))
        data, provenance = entry.config.data, entry.config.provenance
        sizes = ", ".join(f"{name} {size}" for name, size in data.split_sizes.items())
        st.caption(
            f"Trained on split `{data.split_file}` (sha256 `{data.split_hash[:12]}`), sizes {sizes}; "
            f"{provenance.epochs_run} epochs, {entry.config.parameters:,} parameters."
        )
