"""Model cards: each shipped model's card.md, its training data and its limitations."""

from __future__ import annotations

import streamlit as st

from pages.common import get_catalog
from pneumo_core.artifacts import CARD_FILE

st.title("Model cards")
st.warning(
    "None of these models is a medical device. They were trained on pediatric chest X-rays "
    "(children aged one to five) from a single hospital in Guangzhou and have not been validated "
    "on adults, on other hospitals' scanners, or on lateral views."
)

for entry in get_catalog():
    with st.expander(f"{entry.name}: {entry.spec.description}", expanded=entry.shipped):
        if not entry.shipped:
            st.info(entry.unavailable_reason)
            continue
        st.markdown((entry.directory / CARD_FILE).read_text())
        data = entry.config["data"]
        st.caption(
            f"Trained on split `{data['split_file']}` (sha256 `{data['split_hash'][:12]}`), "
            f"sizes {data['split_sizes']}; {entry.config['epochs_run']} epochs, "
            f"{entry.config['parameters']:,} parameters."
        )
