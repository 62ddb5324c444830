"""Diagnose: upload an X-ray, read the prediction and its heatmap."""

from __future__ import annotations

import hashlib

import streamlit as st

from pages.common import get_catalog, get_explainer, load_model, session_memo
from pneumo_core.catalog import best_model
from pneumo_core.diagnosis import (
    DISCLAIMER,
    compare_models,
    diagnose,
    explain_probability,
    list_samples,
    percent,
    samples_credit,
)
from pneumo_core.gradcam import COLORMAPS, methods_for, overlay
from pneumo_core.imaging import (
    MAX_PIXELS,
    MAX_UPLOAD_MB,
    MIN_SIDE,
    conversion_note,
    decode_grayscale,
    fit_within,
    png_bytes,
)

st.title("Pneumonia check on a chest X-ray")
st.caption(DISCLAIMER)

entries = {entry.name: entry for entry in get_catalog()}
best = best_model(list(entries.values()))
if best is None:
    st.error("No trained models were found in models/. Train one with `python -m pneumo_core train`.")
    st.stop()


def model_label(name: str) -> str:
    entry = entries[name]
    suffix = " (recommended)" if name == best.name else "" if entry.shipped else " (unavailable)"
    return f"{name}{suffix}"


with st.sidebar:
    st.header("Model")
    choice = st.selectbox(
        "Model to run", list(entries), index=list(entries).index(best.name), format_func=model_label, key="model"
    )
    entry = entries[choice]
    st.caption(entry.spec.description)
    for other in entries.values():
        if not other.shipped:
            st.caption(f":material/block: **{other.name}** (unavailable): {other.unavailable_reason}")

# --- Input -------------------------------------------------------------------------------------
samples = list_samples()
st.file_uploader(
    f"Upload a chest X-ray (JPEG or PNG, {MIN_SIDE} px to {MAX_PIXELS // 1_000_000} megapixels)",
    type=["png", "jpg", "jpeg"],
    key="upload",
    max_upload_size=MAX_UPLOAD_MB,
    on_change=lambda: st.session_state.update(source="upload"),
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
    image_bytes = sample.path.read_bytes()
elif upload is not None:
    image_bytes = upload.getvalue()
else:
    st.info("Upload an X-ray or pick a sample to start.")
    st.stop()

if not entry.shipped:
    st.warning(f"{entry.name} cannot be used: {entry.unavailable_reason}")
    st.stop()

digest = hashlib.sha256(image_bytes).hexdigest()
try:
    gray = session_memo("decoded", digest, lambda: decode_grayscale(image_bytes))
except ValueError as error:
    st.error(f"Cannot use this file. {error}")
    st.stop()
note = conversion_note(image_bytes)
if note:
    st.info(note)

# --- Prediction (shown before the heatmap is computed) -------------------------------------------
loaded = load_model(str(entry.directory))
result = session_memo("result", (digest, entry.name), lambda: diagnose(loaded, gray))
st.subheader("Result")
label_column, probability_column, threshold_column = st.columns(3)
label_column.metric("Model's reading", result.label)
probability_column.metric("Probability of pneumonia", percent(result.probability))
threshold_column.metric("Operating threshold", percent(result.threshold))
st.markdown(explain_probability(result))

# --- Heatmap ------------------------------------------------------------------------------------
st.subheader("Where the model looked")
methods = methods_for(loaded)
settings = st.columns([2, 2, 2, 3])
method = settings[0].selectbox("Method", methods, key=f"method_{len(methods)}")
colormap = settings[1].selectbox("Colormap", list(COLORMAPS), key="colormap")
opacity = settings[2].slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="opacity")
class_names = loaded.spec.class_names
explained = settings[3].radio(
    "Explain the evidence for",
    [1, 0],
    index=0 if result.target_class == 1 else 1,
    format_func=lambda index: class_names[index],
    horizontal=True,
    key="explain_class",
)

explainer = get_explainer(str(entry.directory))


def compute_heatmap():
    with st.spinner(f"Computing {method}…"):
        return explainer.heatmap(loaded.square(gray), method, explained)


heatmap = session_memo("heatmap", (digest, entry.name, method, explained), compute_heatmap)

shown = fit_within(gray)
blended = overlay(shown, heatmap, opacity=opacity, colormap=colormap)
left, right = st.columns(2)
left.image(shown, caption="Original", width="stretch")
right.image(blended, caption=f"{method} for {class_names[explained]}", width="stretch")
st.caption(
    "The heatmap shows which regions most influenced the model's score, computed on the model's "
    "square input and stretched back to the image. It is not an outline of a lesion."
)
st.download_button(
    "Download overlay (PNG)",
    data=png_bytes(blended),
    file_name=f"overlay_{entry.name}_{method.lower().replace(' ', '_')}.png",
    mime="image/png",
    key="download_overlay",
)

# --- Every model on this image --------------------------------------------------------------------
st.subheader("All models on this image")
if st.button("Run every shipped model", key="run_all"):
    with st.spinner("Running every shipped model…"):
        shipped = [load_model(str(e.directory)) for e in entries.values() if e.shipped]
        st.session_state["all_models"] = (digest, *compare_models(shipped, gray))
all_models = st.session_state.get("all_models")
if all_models and all_models[0] == digest:
    _, table, agree = all_models
    st.dataframe(table, hide_index=True, key="all_models_table")
    if agree:
        st.success("All shipped models agree on this image.")
    else:
        st.warning("The models disagree on this image: treat the result with extra caution.")
