"""Compare models: metrics, confusion matrices, ROC and training curves, all read from verified JSON."""

from __future__ import annotations

import streamlit as st

from pages.common import get_catalog, require_app_entry, side_by_side
from pneumo_core.catalog import best_model, models_dir, recommendation_text
from pneumo_core.figures import (
    best_per_column,
    comparison_table,
    confusion_figure,
    formatted,
    history_figure,
    robustness_heatmap,
    roc_figure,
    subtype_table,
    untrained_note,
)
from pneumo_core.gate_figures import gate_table
from pneumo_core.robustness import METRICS_SHOWN, criteria_table, read_all, worst_cases_sentence
from pneumo_core.subtype_figures import (
    subtype_head_table,
    subtype_heads,
    subtype_roc_figure,
    three_class_confusion_figure,
)
from pneumo_core.tuning_figures import parallel_coordinates_figure, read_tuning, tuning_caption, tuning_table

require_app_entry()  # Before anything is drawn: pages are reached through app.py only.

st.title("Compare models")
entries = get_catalog()
for entry in entries:
    if entry.refused:
        st.error(entry.refused_reason)
shipped = [entry for entry in entries if entry.shipped]
if not shipped:
    st.error("No usable trained models were found in models/.")
    st.stop()

reference = shipped[0].config
sizes = reference.data.split_sizes
st.markdown(
    f"Figures on the **internal test split**: {sizes['test']} images from patients never seen in "
    f"training or validation (patient-grouped {reference.split_percentages} split of "
    f"{sum(sizes.values())} images: {reference.population.source}; split sha256 "
    f"`{reference.data.split_hash[:12]}`). Thresholds were chosen on the {reference.threshold_rule.chosen_on}. "
    "A split of one hospital's images flatters: expect lower specificity on independent images."
)

st.subheader("Metrics at each model's operating threshold")
table = comparison_table(shipped)
best = best_per_column(table)
HIGHLIGHT = "font-weight: bold; background-color: #d4edda"
styled = formatted(table).style.apply(
    lambda column: [HIGHLIGHT if name in best.get(column.name, ()) else "" for name in column.index]
)
st.dataframe(styled, key="metrics_table")
st.caption("Best value in each column highlighted (lowest for log loss and ECE, the expected calibration error).")

st.subheader("Confusion matrices (counts and % of each true class)")
for column, entry in side_by_side(shipped):
    column.plotly_chart(confusion_figure(entry), key=f"confusion_{entry.name}")

st.subheader("ROC curves")
st.plotly_chart(roc_figure(shipped), key="roc")
st.caption("Crosses mark each model's operating point (its threshold).")

st.subheader("Sensitivity by pneumonia subtype")
st.dataframe(formatted(subtype_table(shipped)), key="subtype_table")

# --- Bacterial or viral (subtype.json, written by `python -m pneumo_core fit-subtype`) -----------------
try:
    heads = subtype_heads(shipped)
except ValueError as error:
    st.warning(str(error))
    heads = {}
if heads:
    st.subheader("Bacterial or viral: normal / bacterial / viral on the internal test split")
    for column, (name, settings) in side_by_side(list(heads.items())):
        column.plotly_chart(three_class_confusion_figure(name, settings), key=f"subtype_confusion_{name}")
    st.plotly_chart(subtype_roc_figure(heads), key="subtype_roc")
    st.dataframe(formatted(subtype_head_table(heads)), key="subtype_figures_table")
    st.caption(
        "A second head on each model's frozen features gives P(bacterial | pneumonia); the binary reading and "
        "its threshold are unchanged. Predicted class: NORMAL below the threshold, else the more likely subtype. "
        "ROC: the pneumonia images alone. Named: outside the uncertain band. Radiographs alone separate the two "
        "subtypes poorly."
    )

st.subheader("When the models refuse to answer")
gates = gate_table(models_dir())
if gates.empty:
    st.info("No model has a measured out-of-distribution gate yet (`python -m pneumo_core fit-gate`).")
else:
    rates = [column for column in gates.columns if column.endswith(("accepted", "refused (gate)", "or gate)"))]
    # One format call: a second Styler.format call resets the columns the first one formatted.
    formats = {**{column: "{:.1%}" for column in rates}, "gate cost (ms per image)": "{:.0f}"}
    st.dataframe(gates.set_index("model").style.format(formats), key="gate_table")
    st.caption(
        "Each model's gate is fitted on the training split's X-rays only; its threshold lets at least 99% of "
        "validation X-rays through. Negative images (photos, textures, documents, CT, MR and ultrasound "
        "frames, synthetic shapes) were never used to fit it; they only test it. Perturbed: the internal test "
        "X-rays mildly rotated, cropped, re-exposed or re-compressed."
    )

st.subheader("Robustness to framing and exposure")
robust, not_measured, unreadable = read_all({entry.name: entry.directory for entry in shipped})
for problem in unreadable.values():
    st.warning(problem)
if not_measured:
    st.caption(
        "Not measured: " + ", ".join(f"`{name}`" for name in not_measured) + " (`python -m pneumo_core robustness`)."
    )
if robust:
    st.markdown(
        "The same internal test X-rays read again after changing their framing (padding, cropping), aspect, "
        "exposure (gamma, contrast, histogram equalisation), resolution (downscaling, blur, noise, JPEG), rotation, "
        "or burning a marker into a corner. A **flip** is an X-ray whose answer at the model's threshold changes. "
        "Point at a cell to see which way the answers changed: a flip to normal is a pneumonia reading lost."
    )
    shown_metric = st.radio(
        "Show", list(METRICS_SHOWN), format_func=METRICS_SHOWN.get, horizontal=True, key="robustness_metric"
    )
    st.plotly_chart(robustness_heatmap(robust, shown_metric), key="robustness_heatmap")
    for name, result in robust.items():
        st.markdown(worst_cases_sentence(name, result))
    st.dataframe(criteria_table(robust), key="robustness_criteria")
    st.caption(
        "Targets (issue 8): framing ±10 % and gamma 0.7 to 1.4 each change at most 3 % of answers and move "
        "specificity by at most 0.03; ROC AUC at least 0.99; ECE under shift (the mean expected calibration "
        "error over all perturbations) at most 0.05. In brackets: the perturbation that gave the value."
    )
st.markdown(recommendation_text(best_model(shipped)))

st.subheader("Training curves")
for entry in shipped:
    if entry.history:
        st.plotly_chart(history_figure(entry), key=f"history_{entry.name}")
    else:
        st.markdown(f"**{entry.name}**: {untrained_note(entry)}")

# --- Hyper-parameter search (tuning.json, written by `python -m pneumo_core tune`) -------------------
searches = []
for entry in shipped:
    try:
        tuning = read_tuning(entry.directory)
    except ValueError as error:
        st.warning(str(error))
        continue
    if tuning is not None:
        searches.append((entry.name, tuning))
if searches:
    st.subheader("Hyper-parameter search")
    for name, tuning in searches:
        st.markdown(f"**`{name}`**: {tuning_caption(tuning)}")
        st.plotly_chart(parallel_coordinates_figure(tuning), key=f"tuning_parcoords_{name}")
        st.dataframe(tuning_table(tuning), key=f"tuning_table_{name}")
