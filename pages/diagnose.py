"""Diagnose: upload an X-ray (PNG, JPEG or DICOM), read the model's reading and its heatmap."""

from __future__ import annotations

import hashlib

import streamlit as st

from pages.common import (
    get_catalog,
    get_reader,
    model_picker,
    require_app_entry,
    session_memo,
    shared_reading,
    shared_result,
)
from pneumo_core.artifacts import ModelRefused
from pneumo_core.case_report import render_case_report
from pneumo_core.catalog import best_model
from pneumo_core.diagnosis import (
    compare_models,
    disclaimer,
    explain_probability,
    gauge_figure,
    list_samples,
    operating_facts,
    percent,
    samples_credit,
    verdict,
)
from pneumo_core.gradcam import COLORMAPS, colour_bar, display_pair, methods_for
from pneumo_core.imaging import MAX_UPLOAD_MB, ImageRejected, png_bytes, read_xray
from pneumo_core.subtype import EXPLAIN_TITLES, subtype_caveat, subtype_summary

require_app_entry()  # Before anything is drawn: pages are reached through app.py only.

st.title("Pneumonia check on a chest X-ray")

catalog = get_catalog()
for refused in (entry for entry in catalog if entry.refused):
    st.error(f"The {refused.name} model was refused and cannot be used: {refused.refused_reason}")
entries = {entry.name: entry for entry in catalog if entry.shipped}
best = best_model(list(entries.values()))
if best is None:
    st.error("No usable trained model was found in models/. See the model cards for how to train one.")
    st.stop()

entry = model_picker(entries, best, key="model")
st.caption(disclaimer(entry.config))

# --- Input -------------------------------------------------------------------------------------
samples = list_samples()
st.file_uploader(
    "Upload a chest X-ray (PNG, JPEG or DICOM)",
    key="upload",
    max_upload_size=MAX_UPLOAD_MB,
    on_change=lambda: st.session_state.update(source="upload"),
)
st.caption(
    f":material/info: Files over {MAX_UPLOAD_MB} MB are not accepted: the uploader marks such a file in red and "
    "it is not read. Export a smaller image (or a single-frame DICOM) from your viewer."
)
if samples:
    st.write("…or try a sample X-ray:")
    for column, sample in zip(st.columns(len(samples)), samples, strict=True):
        if column.button(sample.title, key=f"sample_{sample.key}", width="stretch"):
            st.session_state["source"] = sample.key
    st.caption(samples_credit())

upload = st.session_state.get("upload")
sample = {s.key: s for s in samples}.get(st.session_state.get("source"))
if sample is not None:
    image_bytes, image_name = sample.path.read_bytes(), sample.path.name
elif upload is not None:
    image_bytes, image_name = upload.getvalue(), upload.name
else:
    st.info("Upload an X-ray or pick a sample to start.")
    st.stop()

try:
    digest = hashlib.sha256(image_bytes).hexdigest()
    xray = session_memo("xray", digest, lambda: read_xray(image_bytes, image_name))
except ImageRejected as error:
    st.error(f"Cannot use this file. {error}")
    st.stop()
for note in xray.notes:
    st.info(note)
if xray.metadata:
    st.caption("Image: " + " · ".join(f"{field} {value}" for field, value in xray.metadata))

# --- Reading (shown before the heatmap is computed) ----------------------------------------------
try:
    reader = get_reader(str(entry.directory))
except ModelRefused as error:
    st.error(f"The {entry.name} model was refused and cannot be used: {error}")
    st.stop()
reading = shared_reading(reader, xray)
st.subheader("Result")
if not reading.accepted:
    st.error(
        f"**The model did not read this image.** {reading.reason} It was trained on "
        f"{entry.config.population.summary}, so it gives no answer for images unlike those."
    )
    if not st.toggle("Show the model's reading anyway", key=f"reveal_{xray.digest[:16]}"):
        st.stop()
    reading = shared_reading(reader, xray, reveal_refused=True)
    st.warning(
        ":material/warning: Shown although the image was refused: the model has not learned images like this "
        "one, so its score and heatmap may be meaningless. Do not base any decision on them."
    )
elif reading.caution:
    st.warning(
        ":material/warning: This image passed the check, but it is unusual for the model (close to the "
        f"refusal limit). The model was trained on {entry.config.population.summary}; an adult, lateral or "
        "otherwise atypical X-ray may be read less reliably."
    )
facts = operating_facts(entry.config, entry.metrics)
label_column, probability_column, threshold_column, gauge_column = st.columns([3, 2, 2, 4])
label_column.metric("Model's reading", verdict(reading, facts.band))
probability_column.metric("Probability of pneumonia", percent(reading.probability))
threshold_column.metric("Operating threshold", percent(reading.threshold))
gauge_column.plotly_chart(gauge_figure(reading, facts.band), key="gauge", config={"displayModeBar": False})
st.markdown(explain_probability(reading, facts))
if reading.subtype is not None:
    with st.container(border=True, key="subtype_block"):
        st.markdown(subtype_summary(reading.subtype))
        st.caption(subtype_caveat(reader.subtype.settings))

# --- Heatmap ------------------------------------------------------------------------------------
st.subheader("Where the model looked")
methods = methods_for(reader.loaded)
settings = st.columns([2, 2, 2, 4])
method = settings[0].selectbox("Method", methods, key=f"method_{len(methods)}")
colormap = settings[1].selectbox("Colormap", list(COLORMAPS), key="colormap")
opacity = settings[2].slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="opacity")
class_names = reader.loaded.spec.class_names
targets = [1, 0] + (list(EXPLAIN_TITLES) if reader.subtype is not None else [])


def target_title(target: int | str) -> str:
    return class_names[target] if isinstance(target, int) else EXPLAIN_TITLES[target]


explained = settings[3].radio(
    "Explain the evidence for",
    targets,
    index=0 if reading.target_class == 1 else 1,
    format_func=target_title,
    horizontal=True,
    key="explain_class" if reader.subtype is None else "explain_class_subtype",
)


heatmap = shared_result(
    ("heatmap", xray.digest, entry.name, method, explained),
    lambda: reader.heatmap(xray, method, explained),
    f"Computing {method}…",
)

shown, blended = display_pair(xray.gray, heatmap, opacity=opacity, colormap=colormap)
left, right = st.columns(2)
left.image(shown, caption="Original", width="stretch")
right.image(blended, caption=f"{method} for {target_title(explained)}", width="stretch")
right.image(colour_bar(colormap), caption="Heatmap colour scale", width="stretch")
st.caption(
    "The heatmap shows which regions most influenced the model's score, computed on the model's "
    "square input and stretched back over the part of the image it read (blank borders a model trims stay "
    "uncoloured). It is not an outline of a lesion."
)
overlay_column, report_column = st.columns(2)
overlay_column.download_button(
    "Download overlay (PNG)",
    data=lambda: png_bytes(blended),
    file_name=f"overlay_{entry.name}_{method.lower().replace(' ', '_')}.png",
    mime="image/png",
    key="download_overlay",
    on_click="ignore",
)
report_column.download_button(
    "Download report (PDF)",
    data=lambda: render_case_report(
        entry=entry,
        reading=reading,
        image=shown,
        overlay=blended,
        method=method,
        explained=target_title(explained),
        notes=xray.notes,
        shown_verdict=verdict(reading, facts.band),
    ),
    file_name=f"case_report_{entry.name}.pdf",
    mime="application/pdf",
    key="download_report",
    on_click="ignore",
    help="One page: the image, the heatmap, the reading, the model's version and figures. No patient identifiers.",
)

# --- Every model on this image --------------------------------------------------------------------
st.subheader("All models on this image")
if st.button("Run every shipped model", key="run_all"):
    readers = [get_reader(str(e.directory)) for e in entries.values() if e.shipped]
    table, agree = shared_result(
        ("all_models", xray.digest), lambda: compare_models(readers, xray), "Running every shipped model…"
    )
    st.session_state["all_models"] = (xray.digest, table, agree)
all_models = st.session_state.get("all_models")
if all_models and all_models[0] == xray.digest:
    _, table, agree = all_models
    st.dataframe(table, hide_index=True, key="all_models_table")
    if agree:
        st.success("All shipped models agree on this image.")
    else:
        st.warning("The models disagree on this image, or some refused it: treat the result with extra caution.")
