"""Tables, figures and card text of the bacterial-vs-viral heads, read from ``subtype.json`` (no TensorFlow).

Usage:
    heads = subtype_heads(shipped_entries)           # {model name: SubtypeSettings}, models with a head only
    table = subtype_head_table(heads)
    figure = three_class_confusion_figure("cnn", heads["cnn"])
    roc = subtype_roc_figure(heads)
    section = subtype_markdown(heads["cnn"])          # the model card's section
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from pneumo_core.catalog import ModelEntry
from pneumo_core.figures import confusion_heatmap, roc_chart
from pneumo_core.subtype import SubtypeSettings, read_subtype_settings

CLASS_TITLES = {"normal": "NORMAL", "bacteria": "BACTERIAL", "virus": "VIRAL"}


def subtype_heads(entries: Sequence[ModelEntry]) -> dict[str, SubtypeSettings]:
    """The subtype settings of every shipped model that has a head, by model name.

    Raises:
        ModelRefused: If a model's ``subtype.json`` cannot be read.
    """
    heads = {}
    for entry in entries:
        settings = read_subtype_settings(entry.directory) if entry.shipped else None
        if settings is not None:
            heads[entry.name] = settings
    return heads


def subtype_head_table(heads: dict[str, SubtypeSettings]) -> pd.DataFrame:
    """One row per model, labelled ``name (features)``: its head's figures on validation and on the internal
    test split. Every value is a number (rates are fractions in [0, 1]) or None when undefined.
    """
    rows = {}
    for name, settings in heads.items():
        val, test = settings.validation, settings.test
        row = {"val bacterial-vs-viral ROC AUC": val.pneumonia.roc_auc}
        if test is not None:
            row |= {
                "test bacterial-vs-viral ROC AUC": test.pneumonia.roc_auc,
                "test bacterial-vs-viral accuracy": test.pneumonia.accuracy,
                "test ECE of P(bacterial)": test.pneumonia.ece,
                "test share named (not uncertain)": test.pneumonia.confident_share,
                "test accuracy when named": test.pneumonia.confident_accuracy,
                "test 3-class accuracy": test.three_class.accuracy,
                "test 3-class macro ROC AUC": test.three_class.macro_roc_auc,
            }
            for key, figures in test.three_class.by_class.items():
                row[f"test {CLASS_TITLES[key].lower()} sensitivity"] = figures.sensitivity
                row[f"test {CLASS_TITLES[key].lower()} precision"] = figures.precision
        rows[f"{name} ({settings.features})"] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def three_class_confusion_figure(name: str, settings: SubtypeSettings) -> go.Figure:
    """The 3 x 3 confusion matrix on the internal test split (validation when there is none): counts and row %."""
    figures = settings.test or settings.validation
    where = "test" if settings.test is not None else "validation"
    names = [CLASS_TITLES[key] for key in figures.three_class.classes]
    title = f"{name} ({where}, threshold {settings.threshold:.3f})"
    return confusion_heatmap(figures.three_class.confusion, names, title, font_size=13, height=360)


def subtype_roc_figure(heads: dict[str, SubtypeSettings]) -> go.Figure:
    """Bacterial-vs-viral ROC curves on the internal test split's pneumonia images, one per model."""
    pneumonia = {name: (settings.test or settings.validation).pneumonia for name, settings in heads.items()}
    figure = roc_chart({name: (figures.roc_curve, figures.roc_auc) for name, figures in pneumonia.items()})
    figure.update_layout(
        xaxis_title="viral cases called bacterial (false-positive rate)",
        yaxis_title="bacterial cases called bacterial (true-positive rate)",
        height=420,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
    )
    return figure


def subtype_markdown(settings: SubtypeSettings) -> str:
    """The model card's section on the bacterial-vs-viral head: how it was built, what it measured, the caveat."""
    val = settings.validation.pneumonia
    lines = [
        "## Bacterial or viral",
        "A second head, fitted after the binary model on its frozen features "
        f"({settings.features}; L2 C = {settings.l2_c:g}; calibration: {settings.calibration.method}), gives "
        "P(bacterial | pneumonia) for images read as PNEUMONIA. The binary reading and its threshold are unchanged. "
        f"Chosen on the validation split's {val.n} pneumonia images (ROC AUC {_fmt(val.roc_auc)}). "
        f"The reading says uncertain when {settings.band.rule.split(' when ', 1)[-1]}.",
        "",
        "| figure | validation | internal test |",
        "|---|---|---|",
    ]
    test = settings.test
    for label, pick in (
        ("bacterial vs viral ROC AUC (pneumonia images)", lambda f: f.pneumonia.roc_auc),
        ("bacterial vs viral accuracy (pneumonia images)", lambda f: f.pneumonia.accuracy),
        ("ECE of P(bacterial)", lambda f: f.pneumonia.ece),
        ("share named (not uncertain)", lambda f: f.pneumonia.confident_share),
        ("accuracy when named", lambda f: f.pneumonia.confident_accuracy),
        ("normal / bacterial / viral accuracy", lambda f: f.three_class.accuracy),
        ("normal / bacterial / viral macro ROC AUC", lambda f: f.three_class.macro_roc_auc),
    ):
        lines.append(f"| {label} | {_fmt(pick(settings.validation))} | {_fmt(pick(test) if test else None)} |")
    lines += [
        "",
        "Radiographs alone separate bacterial from viral pneumonia poorly; the subtype is a hint to weigh with the "
        "clinical picture and laboratory findings, never a reason to withhold or give antibiotics on its own.",
    ]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
