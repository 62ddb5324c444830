"""Tables and a plotly figure of a hyper-parameter search, read from a model's ``tuning.json``.

Pure functions, no TensorFlow and no streamlit: the Compare page and the model cards call them.

Usage:
    tuning = read_tuning(Path("models/cnn"))
    if tuning is not None:
        table = tuning_table(tuning)
        fig = parallel_coordinates_figure(tuning)
        text = tuning_caption(tuning)
        section = tuning_markdown(tuning)  # for card.md
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

TUNING_FILE = "tuning.json"
SCORE_LABEL = "val ROC AUC"


def read_tuning(directory: Path) -> dict | None:
    """The ``tuning.json`` of a model directory, or ``None`` when the model was not tuned.

    Raises:
        ValueError: If the file exists but is not a search summary.
    """
    path = Path(directory) / TUNING_FILE
    if not path.is_file():
        return None
    try:
        tuning = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg}).") from error
    if not isinstance(tuning, dict) or not isinstance(tuning.get("trials"), list):
        raise ValueError(f"{path} is not a tuning summary written by `python -m pneumo_core tune`.")
    return tuning


def parameter_names(tuning: dict) -> list[str]:
    """The searched hyper-parameters, in the order the search space declares them."""
    return [param["name"] for param in tuning.get("search_space", [])]


def tuning_table(tuning: dict) -> pd.DataFrame:
    """One row per trial, best score first: its settings, validation ROC AUC, epochs and seconds.

    The ``note`` column marks the best trial and the baseline (the untuned defaults).
    """
    best_id = (tuning.get("best") or {}).get("trial_id")
    baseline_id = (tuning.get("baseline") or {}).get("trial_id")
    rows = []
    for trial in tuning["trials"]:
        notes = [
            label for label, trial_id in (("best", best_id), ("defaults", baseline_id)) if trial_id == trial["trial_id"]
        ]
        if trial.get("cut_short_by_budget"):
            notes.append("cut short by the budget")
        if trial.get("status") != "COMPLETED":
            notes.append(str(trial.get("status", "")).lower())
        rows.append(
            {
                "trial": trial["trial_id"],
                **{name: trial["values"].get(name) for name in parameter_names(tuning)},
                SCORE_LABEL: trial.get("val_roc_auc"),
                "best epoch": trial.get("best_epoch"),
                "seconds": trial.get("seconds"),
                "note": ", ".join(notes),
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(SCORE_LABEL, ascending=False, na_position="last").set_index("trial")


def _dimension(param: dict, values: list[float]) -> dict:
    """One parallel-coordinates axis over the declared range; log-scaled parameters on a log10 axis."""
    low, high = param.get("low", min(values)), param.get("high", max(values))
    if param.get("log"):
        low, high = math.log10(low), math.log10(high)
        ticks = [value for value in range(math.floor(low), math.ceil(high) + 1) if low <= value <= high]
        return {
            "label": f"{param['name']} (log)",
            "values": [math.log10(value) for value in values],
            "range": [low, high],
            "tickvals": ticks,
            "ticktext": [f"1e{tick}" for tick in ticks],
        }
    if param.get("choices"):
        choices = list(param["choices"])
        return {"label": param["name"], "values": values, "range": [min(choices), max(choices)], "tickvals": choices}
    return {"label": param["name"], "values": values, "range": [low, high]}


def parallel_coordinates_figure(tuning: dict) -> go.Figure:
    """Every scored trial as one line across the hyper-parameter axes, coloured by validation ROC AUC."""
    scored = [trial for trial in tuning["trials"] if trial.get("val_roc_auc") is not None]
    figure = go.Figure()
    if not scored:
        figure.add_annotation(text="No completed trials yet.", showarrow=False)
        return figure
    scores = [trial["val_roc_auc"] for trial in scored]
    dimensions = [
        _dimension(param, [trial["values"][param["name"]] for trial in scored])
        for param in tuning.get("search_space", [])
    ]
    dimensions.append({"label": SCORE_LABEL, "values": scores, "range": [min(scores), max(scores)]})
    figure.add_trace(
        go.Parcoords(
            line={
                "color": scores,
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": {"text": SCORE_LABEL}},
            },
            dimensions=dimensions,
        )
    )
    figure.update_layout(
        title=f"{tuning.get('model', '')}: {len(scored)} trials of the hyper-parameter search",
        margin={"l": 60, "r": 40, "t": 70, "b": 30},
        height=420,
    )
    return figure


def tuning_caption(tuning: dict) -> str:
    """One paragraph on how the search was run and what it found, from ``tuning.json`` alone."""
    proxy = tuning.get("proxy", {})
    objective = tuning.get("objective", {})
    best = tuning.get("best") or {}
    baseline = tuning.get("baseline") or {}
    minutes = tuning.get("wall_seconds", 0.0) / 60
    parts = [
        f"{tuning.get('n_completed', 0)} of {tuning.get('n_trials', 0)} trials completed in {minutes:.0f} minutes.",
        f"Search: {tuning.get('tuner', 'KerasTuner')}.",
        f"Each trial trained at {proxy.get('input_size')}x{proxy.get('input_size')} px for "
        f"{proxy.get('epochs_per_trial')} epochs (the model itself uses {proxy.get('full_input_size')} px).",
        f"Objective: {objective.get('description', 'validation ROC AUC')}.",
    ]
    if best:
        parts.append(f"Best: trial {best['trial_id']}, val ROC AUC {best['val_roc_auc']:.4f}")
        if baseline.get("val_roc_auc") is not None:
            parts[-1] += f" (the untuned defaults: {baseline['val_roc_auc']:.4f} under the same proxy)"
        parts[-1] += "."
    if objective.get("robustness_note"):
        parts.append(objective["robustness_note"])
    return " ".join(parts)


def tuning_markdown(tuning: dict) -> str:
    """A Markdown section for a model card: how the search ran, and the best settings beside the defaults."""
    best = (tuning.get("best") or {}).get("values", {})
    defaults = tuning.get("defaults", {})
    rows = "\n".join(
        f"| {name} | {_short(defaults.get(name))} | {_short(best.get(name))} |" for name in parameter_names(tuning)
    )
    return (
        "## Hyper-parameter search\n"
        f"{tuning_caption(tuning)}\n\n"
        "| hyper-parameter | default | best trial |\n|---|---|---|\n"
        f"{rows}\n"
    )


def _short(value: object) -> str:
    """A number in a few significant digits, or n/a."""
    return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
