"""Tables and plotly figures for comparing models, built from their saved metrics.

Usage:
    table = comparison_table(shipped_entries)
    fig = confusion_figure(entry)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pneumo_core.catalog import ModelEntry

if TYPE_CHECKING:
    from pneumo_core.robustness import RobustnessResult

TABLE_COLUMNS = {
    "accuracy": "Accuracy",
    "precision": "Precision",
    "sensitivity": "Recall (sensitivity)",
    "specificity": "Specificity",
    "f1": "F1",
    "roc_auc": "ROC AUC",
    "log_loss": "Log loss",
    "ece": "ECE",
    "n": "n",
}
LOWER_IS_BETTER = ("Log loss", "ECE")


def comparison_table(entries: list[ModelEntry]) -> pd.DataFrame:
    """One row per shipped model with its test-split metrics at its operating threshold."""
    rows = {
        entry.name: {label: getattr(entry.metrics.test, key) for key, label in TABLE_COLUMNS.items()}
        | {"Threshold": entry.config.threshold}
        for entry in entries
    }
    return pd.DataFrame.from_dict(rows, orient="index")


def best_per_column(table: pd.DataFrame, digits: int = 3) -> dict[str, set[str]]:
    """Which models are best in each metric column (lowest for log loss and ECE); ties as shown all count."""
    best = {}
    for column in table.columns:
        if column in ("n", "Threshold"):
            continue
        values = pd.to_numeric(table[column], errors="coerce").round(digits)
        if values.notna().any():
            target = values.min() if column in LOWER_IS_BETTER else values.max()
            best[column] = set(values.index[values == target])
    return best


def formatted(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The table as display strings: fixed decimals, integers as such, missing values as n/a."""

    def cell(value: object) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "n/a"
        return str(value) if isinstance(value, int | np.integer) else f"{value:.{digits}f}"

    return table.apply(lambda column: column.map(cell))


def confusion_figure(entry: ModelEntry) -> go.Figure:
    """Confusion matrix at the operating threshold: counts and row percentages."""
    matrix = entry.metrics.test.confusion_at_threshold.matrix
    title = f"{entry.name} (threshold {entry.config.threshold:.3f})"
    return confusion_heatmap(matrix, list(entry.spec.class_names), title, font_size=15, height=340)


def confusion_heatmap(
    counts: Sequence[Sequence[float]], names: list[str], title: str, font_size: int = 15, height: int = 340
) -> go.Figure:
    """A confusion matrix (true classes down, predicted across) as counts and percentages of each true class."""
    matrix = np.array(counts, dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    percent = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0) * 100
    size = len(names)
    text = [[f"{int(matrix[i, j])}<br>{percent[i, j]:.1f}% of row" for j in range(size)] for i in range(size)]
    figure = go.Figure(
        go.Heatmap(
            z=percent,
            x=names,
            y=names,
            text=text,
            texttemplate="%{text}",
            textfont={"size": font_size},
            colorscale="Blues",
            zmin=0,
            zmax=100,
            showscale=False,
            hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>",
        )
    )
    figure.update_layout(
        title=title,
        xaxis_title="predicted",
        yaxis={"autorange": "reversed", "title": "true"},
        height=height,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    return figure


def roc_chart(curves: Mapping[str, tuple[object, float | None]]) -> go.Figure:
    """A chance diagonal and one ROC line per name; ``curves`` maps a name to (curve with fpr/tpr or None, AUC)."""
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"))
    for name, (curve, auc) in curves.items():
        if curve is not None:
            figure.add_trace(
                go.Scatter(x=list(curve.fpr), y=list(curve.tpr), mode="lines", name=f"{name} (AUC {auc:.3f})")
            )
    return figure


def roc_figure(entries: list[ModelEntry]) -> go.Figure:
    """ROC curves of all models on one chart, each operating point marked."""
    figure = roc_chart({entry.name: (entry.metrics.test.roc_curve, entry.metrics.test.roc_auc) for entry in entries})
    for entry in entries:
        test = entry.metrics.test
        if test.roc_curve is None:
            continue
        figure.add_trace(
            go.Scatter(
                x=[1 - test.specificity],
                y=[test.sensitivity],
                mode="markers",
                marker={"size": 11, "symbol": "x"},
                name=f"{entry.name} operating point",
            )
        )
    figure.update_layout(
        xaxis_title="1 - specificity (false-positive rate)",
        yaxis_title="sensitivity (true-positive rate)",
        height=460,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
    )
    return figure


def untrained_note(entry: ModelEntry) -> str:
    """Why a shipped model has no training curves: an ensemble is assembled from trained models, not trained."""
    if entry.spec.assembled_from:
        return (
            f"no training curves: it was assembled from trained {entry.spec.assembled_from}, not trained as a"
            " whole (its model card lists them and how each was trained)."
        )
    return "no training curves were recorded."


def history_figure(entry: ModelEntry) -> go.Figure:
    """Loss and accuracy per epoch, training (solid) vs validation (dashed); fine-tuning start marked."""
    history = pd.DataFrame(list(entry.history))
    figure = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    for column, metric in enumerate(("loss", "accuracy"), start=1):
        for prefix, label, dash in (("", "training", "solid"), ("val_", "validation", "dash")):
            key = prefix + metric
            if key in history:
                figure.add_trace(
                    go.Scatter(
                        x=history["epoch"] + 1,
                        y=history[key],
                        mode="lines+markers",
                        line={"dash": dash},
                        name=f"{label} {metric}",
                    ),
                    row=1,
                    col=column,
                )
    fine_tune = history.index[history.get("phase", pd.Series(dtype=str)) == "fine-tune"]
    if len(fine_tune):
        first_epoch = int(history.loc[fine_tune[0], "epoch"]) + 1
        figure.add_vline(x=first_epoch - 0.5, line_dash="dot", annotation_text="fine-tuning", row="all", col="all")
    figure.update_xaxes(title_text="epoch")
    figure.update_layout(height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10}, title=entry.name)
    return figure


def subtype_table(entries: list[ModelEntry]) -> pd.DataFrame:
    """Sensitivity on bacterial vs viral pneumonia per model (test split)."""
    rows = {}
    for entry in entries:
        by_subtype = entry.metrics.test.sensitivity_by_subtype
        rows[entry.name] = {
            f"{subtype} sensitivity (n={values.n})": values.sensitivity for subtype, values in by_subtype.items()
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def robustness_heatmap(results: Mapping[str, RobustnessResult], metric: str = "flip_rate") -> go.Figure:
    """Models x perturbations heatmap of the flip rate (``flip_rate``) or the change of specificity
    (``specificity_change``) from each model's ``robustness.json`` (see :mod:`pneumo_core.robustness`)."""
    from pneumo_core.robustness import METRICS_SHOWN, flip_directions, heatmap_values

    values = heatmap_values(results, metric)
    flips = metric == "flip_rate"
    text = values.map(lambda value: "" if pd.isna(value) else f"{value:.0%}" if flips else f"{value:+.2f}")
    colours = {"colorscale": "Reds", "zmin": 0.0} if flips else {"colorscale": "RdBu", "zmid": 0.0}
    figure = go.Figure(
        go.Heatmap(
            z=values.to_numpy(),
            x=list(values.columns),
            y=list(values.index),
            text=text.to_numpy(),
            customdata=flip_directions(results).to_numpy(),
            texttemplate="%{text}",
            hovertemplate="%{y}, %{x}: %{text} (answers changed: %{customdata})<extra></extra>",
            colorbar={"title": METRICS_SHOWN[metric], "tickformat": ".0%" if flips else "+.2f"},
            **colours,
        )
    )
    figure.update_layout(
        height=220 + 60 * len(values.index),
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"tickangle": -60},
        yaxis={"autorange": "reversed"},
    )
    return figure
