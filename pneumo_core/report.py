"""Regenerate the model cards and the README's result tables from ``models/*/metrics.json`` and ``bench/bench.json``.

The tables sit between ``<!-- metrics:start -->``/``<!-- metrics:end -->`` and
``<!-- bench:start -->``/``<!-- bench:end -->`` markers; nothing in them is typed by hand.

Usage:
    python -m pneumo_core report --readme README.md
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pneumo_core.artifacts import METRICS_FILE, read_json, refresh_card, shipped_model_dirs

BENCH_FILE = Path(__file__).resolve().parent.parent / "bench" / "bench.json"


METRIC_HEADER = ("model", "n test", "accuracy", "sensitivity", "specificity", "precision", "F1", "ROC AUC")
METRIC_HEADER += ("PR AUC", "ECE", "threshold", "val ROC AUC")
TEST_KEYS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc", "ece")
BENCH_HEADER = ("model", "predict median", "predict p95", "+ heatmap median", "+ heatmap p95", "heatmap")
BENCH_HEADER += ("process start to first prediction",)


def _table(header: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def metrics_table(models_dir: Path) -> str:
    """Markdown table of every shipped model's internal-test metrics."""
    rows = []
    for name, directory in shipped_model_dirs(models_dir).items():
        metrics = read_json(directory / METRICS_FILE)
        test = metrics["test"]
        values = [test[key] for key in TEST_KEYS] + [metrics["threshold"], metrics["validation"]["roc_auc"]]
        rows.append([f"`{name}`", str(test["n"])] + [_fmt(value) for value in values])
    return "\n".join(_table(METRIC_HEADER, rows))


def bench_table(bench_file: Path = BENCH_FILE) -> str:
    """Markdown table of the latest benchmark, or a note that none was run."""
    if not bench_file.is_file():
        return "_No benchmark yet: run `python -m pneumo_core bench`._"
    bench = json.loads(bench_file.read_text())
    rows = []
    for name, figures in bench["models"].items():
        predict, explain = figures["predict"], figures["predict_and_heatmap"]
        rows.append(
            [f"`{name}`"]
            + [
                f"{value:.3f}"
                for value in (predict["median_s"], predict["p95_s"], explain["median_s"], explain["p95_s"])
            ]
            + [figures["heatmap_method"], f"{figures['process_start_to_first_prediction_s']:.1f}"]
        )
    intro = (
        f"Measured on {bench['machine']['cpus']} CPU cores, {bench['repeats']} passes over the "
        f"{len(bench['images'])} sample images (seconds)."
    )
    return "\n".join([intro, "", *_table(BENCH_HEADER, rows)])


def replace_block(text: str, marker: str, body: str) -> str:
    """Replace the text between ``<!-- marker:start -->`` and ``<!-- marker:end -->``."""
    pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)", re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"README has no <!-- {marker}:start --> / <!-- {marker}:end --> markers.")
    return pattern.sub(lambda match: match.group(1) + body + "\n" + match.group(2), text)


def update_readme(readme: Path, models_dir: Path) -> None:
    """Re-render every model card, then rewrite the metrics and benchmark tables of ``readme``."""
    for directory in shipped_model_dirs(models_dir).values():
        refresh_card(directory)
    text = readme.read_text()
    text = replace_block(text, "metrics", metrics_table(models_dir))
    text = replace_block(text, "bench", bench_table())
    readme.write_text(text)
    print(f"updated {readme}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
