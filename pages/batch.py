"""Batch: read many X-rays at once (files or a zip), download the table, and validate on labelled images."""

from __future__ import annotations

import streamlit as st

from pages.common import get_catalog, get_reader, model_picker, require_app_entry, session_memo
from pneumo_core.archive import ArchiveRefused
from pneumo_core.batch_scoring import csv_bytes, local_validation, results_table, score, upload_batch
from pneumo_core.catalog import best_model
from pneumo_core.diagnosis import disclaimer, operating_facts, percent
from pneumo_core.imaging import MAX_UPLOAD_MB
from pneumo_core.local_validation import LabelsError, local_confusion_figure, local_roc_figure, metrics_table
from pneumo_core.serving import WORK_QUEUE

require_app_entry()  # Before anything is drawn: pages are reached through app.py only.

st.title("Many X-rays at once")

shipped = {entry.name: entry for entry in get_catalog() if entry.shipped}
best = best_model(list(shipped.values()))
if best is None:
    st.error("No trained models were found in models/. See the model cards for how to train one.")
    st.stop()

entry = model_picker(shipped, best, key="batch_model")
st.caption(disclaimer(entry.config))

st.markdown(
    "Upload chest X-rays (PNG, JPEG or DICOM), or a **.zip** of them (sub-folders allowed). To see how the "
    "model does **on your own images**, put them in `NORMAL/` and `PNEUMONIA/` folders inside the zip, or add "
    "a labels CSV with the columns `file,label`. Nothing you upload is stored: it is read in memory and "
    "forgotten when you close the page."
)
uploads = st.file_uploader(
    f"X-rays or .zip archives (up to {MAX_UPLOAD_MB} MB each; split larger sets into several zips)",
    accept_multiple_files=True,
    key="batch_upload",
    max_upload_size=MAX_UPLOAD_MB,
)
labels_upload = st.file_uploader(
    "Labels (optional): a CSV with the columns file,label (label NORMAL or PNEUMONIA)",
    type=["csv"],
    key="batch_labels",
    max_upload_size=MAX_UPLOAD_MB,
)
if not uploads:
    st.info("Upload X-rays or a zip archive to start.")
    st.stop()

upload_key = (tuple(upload.file_id for upload in uploads), labels_upload.file_id if labels_upload else None)
try:
    batch = session_memo(
        "batch_input",
        upload_key,
        lambda: upload_batch(
            [(upload.name, upload.getvalue()) for upload in uploads],
            labels_upload.getvalue() if labels_upload else None,
        ),
    )
except (ArchiveRefused, LabelsError) as error:
    st.error(str(error))
    st.stop()

st.write(
    f"**{batch.count}** image(s) to read with **{entry.name}**"
    + (f"; {len(batch.skipped)} file(s) skipped (see below)." if batch.skipped else ".")
)
if batch.skipped:
    with st.expander(f"{len(batch.skipped)} file(s) skipped"):
        st.dataframe(
            [{"file": item.name, "reason": item.reason} for item in batch.skipped], hide_index=True, key="batch_skipped"
        )
if not batch.count:
    st.warning("There is no PNG, JPEG or DICOM image to read in what you uploaded.")
    st.stop()

result_key = (upload_key, entry.name)
if st.button(f"Read {batch.count} image(s)", key="batch_run", type="primary"):
    bar = st.progress(0.0, text=f"Reading {batch.count} image(s) with {entry.name}…")

    def show_progress(done: int, total: int) -> None:
        bar.progress(done / total, text=f"Read {done} of {total} image(s)")

    reader = get_reader(str(entry.directory))
    rows = score(reader, batch, progress=show_progress, through=WORK_QUEUE.run)
    bar.empty()
    st.session_state["batch_result"] = (result_key, rows)

stored = st.session_state.get("batch_result")
if stored is None or stored[0] != result_key:
    st.stop()
rows = stored[1]

# --- Results ------------------------------------------------------------------------------------
band = operating_facts(entry.config, entry.metrics).band
table = results_table(rows, band)
readings = table["reading"].value_counts()
st.subheader("Readings")
columns = st.columns(4)
columns[0].metric("Images read", int((table["accepted"] == "yes").sum()))
columns[1].metric("PNEUMONIA", int(readings.get("PNEUMONIA", 0)))
columns[2].metric("INDETERMINATE", int(readings.get("INDETERMINATE", 0)))
columns[3].metric("Refused", int((table["accepted"] == "no").sum()))
st.dataframe(table, hide_index=True, key="batch_table")
if band is not None and (table["reading"] == "INDETERMINATE").any():
    st.caption(
        f"INDETERMINATE: a probability in the grey band from {percent(band.low)} to {percent(band.high)}, "
        "where both pneumonia and normal validation images were common: read these images yourself."
    )
st.download_button(
    "Download the table (CSV)",
    data=lambda: csv_bytes(rows),
    file_name=f"readings_{entry.name}.csv",
    mime="text/csv",
    key="batch_csv",
    on_click="ignore",
    icon=":material/download:",
)

# --- Local validation ---------------------------------------------------------------------------
st.subheader("How the model does on your labelled images")
validation = local_validation(rows, entry.config.threshold)
if validation is None:
    st.info(
        "No true labels were found. Put the images in NORMAL/ and PNEUMONIA/ folders inside the zip, or "
        "upload a labels CSV, to see the model's sensitivity and specificity on your images."
    )
    st.stop()
for sentence in validation.summary():
    st.markdown(f"- {sentence}")
st.dataframe(metrics_table(validation, entry.name), key="batch_metrics")
confusion_column, roc_column = st.columns(2)
confusion_column.plotly_chart(local_confusion_figure(entry, validation), key="batch_confusion")
roc_column.plotly_chart(local_roc_figure(entry, validation), key="batch_roc")
st.caption(
    "Same figures as the Compare page, computed on your images at the shipped threshold. The cross marks the "
    "shipped operating point; the diamond the threshold that reaches the sensitivity target on these images."
)
