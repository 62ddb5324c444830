"""Model cards and the README's result tables, generated from the models' typed artifacts and ``bench/bench.json``.

:func:`render_card` writes a model card from a model's :class:`~pneumo_core.artifacts.ModelConfig` and
:class:`~pneumo_core.artifacts.ModelMetrics`. The README tables sit between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` markers (NAME: metrics, robustness, subtype, bench); nothing in them is typed by hand.

Usage:
    python -m pneumo_core report --readme README.md
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from pneumo_core.artifacts import (
    CARD_FILE,
    EnsembleMember,
    ModelConfig,
    ModelMetrics,
    read_model_dir,
    seal,
    shipped_model_dirs,
)
from pneumo_core.augment import AUGMENT_POLICIES
from pneumo_core.gradcam import heatmap_methods
from pneumo_core.imaging import FRAMINGS
from pneumo_core.registry import get_spec

BENCH_FILE = Path(__file__).resolve().parent.parent / "bench" / "bench.json"


METRIC_HEADER = ("model", "n test", "accuracy", "sensitivity", "specificity", "precision", "F1", "ROC AUC")
METRIC_HEADER += ("PR AUC", "ECE", "threshold", "val ROC AUC")
TEST_KEYS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc", "ece")
BENCH_HEADER = ("model", "predict median", "predict p95", "+ heatmap median", "+ heatmap p95", "heatmap")
BENCH_HEADER += ("single / batched per image", "process start to first prediction")
COLD_HEADER = ("model", "import TensorFlow", "import project", "load model", "first prediction", "total")
LOAD_FILE = BENCH_FILE.parent / "load_test.json"


def _table(header: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def metrics_table(models_dir: Path) -> str:
    """Markdown table of every shipped model's internal-test metrics."""
    rows = []
    for name, directory in shipped_model_dirs(models_dir).items():
        found = read_model_dir(directory)
        test = found.metrics.test
        values = [getattr(test, key) for key in TEST_KEYS]
        values += [found.config.threshold, found.metrics.validation.roc_auc]
        rows.append([f"`{name}`", str(test.n)] + [_fmt(value) for value in values])
    return "\n".join(_table(METRIC_HEADER, rows))


def bench_table(bench_file: Path = BENCH_FILE, load_file: Path = LOAD_FILE) -> str:
    """Markdown tables of the latest benchmark (latency, cold start, browser load), or a note that none was run."""
    if not bench_file.is_file():
        return "_No benchmark yet: run `python -m pneumo_core bench`._"
    bench = json.loads(bench_file.read_text())
    rows, cold_rows = [], []
    for name, figures in bench["models"].items():
        predict, explain, cold = figures["predict"], figures["predict_and_heatmap"], figures["cold_start"]
        ratio = figures["single_vs_batched"]
        latency = (predict["median_s"], predict["p95_s"], explain["median_s"], explain["p95_s"])
        single_batched = f"{ratio['single_s']:.3f} / {ratio['batched_per_image_s']:.3f} ({ratio['ratio']:.2f}x)"
        total = f"{cold['process_start_to_first_prediction_s']:.1f}"
        timings = [f"{value:.3f}" for value in latency]
        rows.append([f"`{name}`", *timings, figures["heatmap_method"], single_batched, total])
        phases = ("import_tensorflow_s", "import_project_s", "load_model_s", "first_prediction_s")
        cold_rows.append([f"`{name}`", *(f"{cold[key]:.2f}" for key in phases)])
        cold_rows[-1].append(f"{cold['process_start_to_first_prediction_s']:.2f}")
    busy = bench["machine"].get("load_average_before")
    intro = (
        f"Measured on {bench['machine']['cpus']} CPU cores, {bench['repeats']} passes over the "
        f"{len(bench['images'])} sample images (seconds)"
        + (f"; load average {busy[0]:.1f} before the run." if busy else ".")
    )
    tables = [intro, "", *_table(BENCH_HEADER, rows), "", "Cold start of a new process, by phase (seconds):", ""]
    tables += _table(COLD_HEADER, cold_rows)
    if load_file.is_file():
        tables += ["", *load_table(json.loads(load_file.read_text()))]
    return "\n".join(tables)


def load_table(load: dict) -> list[str]:
    """The browser load test (``bench/load_test.py``) as Markdown lines."""
    rows = []
    for model, run in load["sessions"].items():
        rows.append(
            [f"`{model}`", str(run["sessions"]), str(run["lost"]), str(run.get("slow", 0))]
            + [_delivered_and_shown(run, kind, key) for kind in ("reading", "heatmap") for key in ("p50_s", "p95_s")]
            + [f"{run['page_load']['p95_s']:.1f}", _cpu_share(run)]
        )
    header = ("model", "sessions at once", "lost", "slow", "reading p50", "reading p95", "heatmap p50", "heatmap p95")
    machine = load.get("machine", {})
    busy = machine.get("load_average_before")
    return [
        f"Browser load test (`bench/load_test.py`): the page is ready {load['page_ready_after_launch_s']:.1f} s "
        f"after `streamlit run app.py` starts; server peak RSS {load['server_peak_rss_mb']:.0f} MB. Once every "
        "page has loaded, each session switches model and uploads its own image at once; seconds from upload, as "
        "delivered to the browser / as shown by it (the ten browsers run on the server's own cores)"
        + (f"; {machine.get('cpus')} cores, load average {busy[0]:.1f} before the run:" if busy else ":"),
        "",
        *_table((*header, "page load p95", "server's share of the CPU used"), rows),
        *_client_table(load),
    ]


def _client_table(load: dict) -> list[str]:
    """The same waves through the websocket protocol (no browsers), when measured."""
    rows = [
        [f"`{model}`", str(client["sessions"]), str(client["done"])]
        + [f"{client[kind][key]:.2f}" for kind in ("reading", "heatmap") for key in ("p50_s", "p95_s")]
        for model, run in load["sessions"].items()
        if (client := run.get("client")) and client["done"]
    ]
    if not rows:
        return []
    intro = (
        "The same sessions through Streamlit's websocket protocol instead of browsers (`tests/client_driver.py`): "
        "what the server delivers when each doctor's browser runs on their own machine; seconds from the model "
        "switch, upload included:"
    )
    header = ("model", "sessions at once", "got both", "reading p50", "reading p95", "heatmap p50", "heatmap p95")
    return ["", intro, "", *_table(header, rows)]


def _cpu_share(run: dict) -> str:
    share = run.get("cpu", {}).get("server_cpu_share")
    return "" if share is None else f"{share:.0%}"


def _delivered_and_shown(run: dict, kind: str, key: str) -> str:
    shown = f"{run[kind][key]:.1f}"
    delivered = run.get(f"{kind}_delivered", {}).get(key)
    return shown if delivered is None else f"{delivered:.1f} / {shown}"


ROBUSTNESS_HEADER = ("model", "images", "ROC AUC", "most flips", "largest specificity change")
ROBUSTNESS_HEADER += ("framing ±10 %: flips / specificity", "gamma 0.7-1.4: flips / specificity", "ECE under shift")
ROBUSTNESS_HEADER += ("targets met",)


def robustness_table(models_dir: Path) -> str:
    """Markdown table of every shipped model's ``robustness.json`` (internal test split); "not measured" without one."""
    from pneumo_core.robustness import read_robustness

    rows = []
    for name, directory in shipped_model_dirs(models_dir).items():
        result = read_robustness(directory)
        if result is None:
            rows.append([f"`{name}`", "not measured", *[""] * (len(ROBUSTNESS_HEADER) - 2)])
            continue
        summary = result.summary
        flips, specificity = summary.worst_by_flip_rate[:1], summary.worst_by_specificity_change[:1]
        rows.append(
            [
                f"`{name}`",
                str(result.n),
                _fmt(result.unperturbed.roc_auc),
                "; ".join(f"{case.perturbation} ({case.value:.1%})" for case in flips) or "n/a",
                "; ".join(f"{case.perturbation} ({case.value:+.3f})" for case in specificity) or "n/a",
                _criteria_pair(summary, "framing ±10 %"),
                _criteria_pair(summary, "gamma 0.7 to 1.4"),
                _fmt(summary.ece_under_shift),
                f"{summary.targets_met} of {len(summary.criteria)}",
            ]
        )
    return "\n".join(_table(ROBUSTNESS_HEADER, rows))


SUBTYPE_HEADER = ("model", "pneumonia images", "bacterial vs viral: ROC AUC", "accuracy", "ECE")
SUBTYPE_HEADER += ("outside the uncertain band: share / accuracy", "3 classes: accuracy", "macro ROC AUC")


def subtype_table(models_dir: Path) -> str:
    """Markdown table of every shipped model's bacterial-vs-viral head (``subtype.json``, internal test split)."""
    from pneumo_core.subtype import read_subtype_settings

    rows = []
    for name, directory in shipped_model_dirs(models_dir).items():
        settings = read_subtype_settings(directory)
        if settings is None or settings.test is None:
            rows.append([f"`{name}`", "no head", *[""] * (len(SUBTYPE_HEADER) - 2)])
            continue
        pneumonia, three = settings.test.pneumonia, settings.test.three_class
        rows.append(
            [
                f"`{name}`",
                f"{pneumonia.n} ({pneumonia.n_bacteria} bacterial, {pneumonia.n_virus} viral)",
                _fmt(pneumonia.roc_auc),
                _fmt(pneumonia.accuracy),
                _fmt(pneumonia.ece),
                f"{_pct(pneumonia.confident_share)} / {_fmt(pneumonia.confident_accuracy)}",
                _fmt(three.accuracy),
                _fmt(three.macro_roc_auc),
            ]
        )
    return "\n".join(_table(SUBTYPE_HEADER, rows))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _criteria_pair(summary, group: str) -> str:
    """``"2.1% / 0.013"``: the largest flip rate and |specificity change| of a criteria group."""
    criteria = {criterion.name: criterion for criterion in summary.criteria}
    flip, moved = criteria[f"{group}: flip rate"], criteria[f"{group}: |specificity change|"]
    return f"{_pct(flip.measured)} / {_fmt(moved.measured)}"


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
    text = replace_block(text, "robustness", robustness_table(models_dir))
    text = replace_block(text, "subtype", subtype_table(models_dir))
    readme.write_text(text)
    print(f"updated {readme}")


def render_card(config: ModelConfig, metrics: ModelMetrics, extra_sections: Sequence[str] = ()) -> str:
    """A short model card in Markdown: data, intended use, metrics, training, limitations.

    ``extra_sections`` (Markdown, each starting with a ``##`` heading) go before the limitations:
    the gate's figures and the hyper-parameter search, when the model has them.
    """
    extras = "".join(section.rstrip() + "\n\n" for section in extra_sections)
    spec, data, population, test = config.spec, config.data, config.population, metrics.test
    rows = "\n".join(f"| {label} | {_fmt(getattr(test, key))} |" for key, label in CARD_METRICS.items())
    split_sizes = ", ".join(f"{name}: {size}" for name, size in data.split_sizes.items())
    *others, last = heatmap_methods(get_spec(spec.name))
    heatmap = f"{', '.join(others)} or {last}" if others else last
    calibration = config.calibration
    sign = "-" if calibration.shift < 0 else "+"
    negative, positive = spec.class_names
    return f"""# Model card: `{spec.name}`

{spec.description}

**This model is not a medical device.** It is research and decision-support software;
it must not be used to diagnose, treat or rule out disease.

## Data
{population.source}:
{population.description}.
Split by patient {config.split_percentages} ({split_sizes};
split `{data.split_file}`, sha256 `{data.split_hash[:12]}`).

## Input
Grayscale; {FRAMINGS[config.args.framing]} of {spec.input_size}x{spec.input_size} pixels;
{_preprocessing_text(spec.name)}

## Intended use
Second-reader support for clinicians and researchers reviewing chest X-rays like the
training images, {population.summary}, for pneumonia, with a heatmap of where the model
looked ({heatmap}).

## Metrics (internal test split, n = {test.n}, threshold {config.threshold:.3f})
| metric | value |
|---|---|
{rows}

Threshold rule: {config.threshold_rule.text}

Calibration: {calibration.method}, p = sigmoid({calibration.scale:.4f} z {sign} {abs(calibration.shift):.4f}).

## Training
{_training_facts(config)}

{extras}## Limitations
- Trained and tested on {population.summary};
  not validated on {population.not_validated_on}.
- The internal test split comes from the same pool as the training images and flatters:
  on independent test images, models like this keep sensitivity high but lose specificity
  (more normal images called pneumonia).
- It separates {negative} from {positive} only; it cannot recognise other findings.
- The probability is calibrated on the {config.threshold_rule.chosen_on}, not on your population.
"""


def card_sections(directory: Path) -> list[str]:
    """The optional model-card sections of a verified model directory: its gate, its hyper-parameter search,
    its robustness to framing and exposure, its bacterial-vs-viral head."""
    from pneumo_core.candidate import candidate_markdown, read_candidate
    from pneumo_core.gate import read_gate_settings
    from pneumo_core.robustness import card_markdown, read_robustness
    from pneumo_core.subtype import read_subtype_settings
    from pneumo_core.subtype_figures import subtype_markdown
    from pneumo_core.tuning_figures import read_tuning, tuning_markdown

    sections = []
    gate = read_gate_settings(directory)
    if gate is not None and gate.report is not None:
        report = gate.report
        sections.append(
            "## When it refuses to answer\n"
            "An out-of-distribution gate, fitted on the training split's X-rays only, refuses images unlike them "
            "(no probability, no heatmap). Measured: "
            f"{report.internal_test.rate:.1%} of internal test X-rays and {report.perturbed_test.rate:.1%} of "
            f"mildly perturbed copies accepted; {report.negatives.rate:.1%} of {report.negatives.n} images that are "
            "not chest X-rays (photos, textures, documents, CT, MR, ultrasound, synthetic shapes) refused; "
            f"{report.cost.judge_median_ms:.0f} ms per image."
        )
    optional = (
        (read_tuning, tuning_markdown),
        (read_candidate, candidate_markdown),
        (read_robustness, card_markdown),
        (read_subtype_settings, subtype_markdown),
    )
    for read, render in optional:
        found = read(directory)
        if found is not None:
            sections.append(render(found))
    return sections


def _training_facts(config: ModelConfig) -> str:
    provenance, args = config.provenance, config.args
    machine = provenance.machine
    if machine is None:
        where = "a machine that was not recorded"
    else:
        gpus = ", ".join(machine.gpus) or "no GPU"
        where = f"{machine.cpu_cores} CPU cores ({machine.cpu_model or 'CPU model not reported'}), {gpus}"
    libraries = ", ".join(f"{name} {version}" for name, version in provenance.libraries.items())
    if args.members:
        return _ensemble_facts(config, where, libraries)
    joint = (
        " Trained jointly with a bacterial-vs-viral output on the pneumonia images"
        f" (loss weight {args.subtype_weight:g}); that output is not shipped: the subtype head is fitted"
        " afterwards on the features it shaped."
        if args.subtype_weight > 0
        else ""
    )
    consistency = (
        " Each X-ray was fed as two independently augmented views, and the difference between their readings"
        f" was penalised (Jensen-Shannon consistency, loss weight {args.consistency_weight:g})."
        if args.consistency_weight > 0
        else ""
    )
    warm_start = (
        f" Started from the weights of {args.init_from} (model.keras sha256 {args.init_from_sha256[:12]})."
        if args.init_from is not None
        else ""
    )
    policy = _augmentation_text(args.augment, args.augment_strength, args.normal_zoom, args.aspect_swap)
    return (
        f"{provenance.epochs_run} epochs, {config.parameters:,} parameters, {provenance.training_seconds / 60:.1f} min "
        f"wall time on {where}; {libraries}. Augmentation ({policy}): {AUGMENT_POLICIES[args.augment]}. "
        f"Input framing ({args.framing}): {FRAMINGS[args.framing]}.{joint}{consistency}{warm_start}"
    )


def _augmentation_text(augment: str, strength: float, normal_zoom: float, aspect_swap: float = 0.0) -> str:
    """A training run's augmentation in a few words: its policy, the strength, the normal zoom and the aspect swap
    when used."""
    policy = augment + ("" if strength == 1 else f", every range x{strength:g}")
    if normal_zoom > 0:
        policy += f"; NORMAL images also zoomed in up to x{1 + normal_zoom:g} half of the time"
    if aspect_swap > 0:
        policy += (
            f"; half of the images given the other class's proportions (NORMAL zoomed vertically, PNEUMONIA"
            f" horizontally, about x{aspect_swap:g})"
        )
    return policy


def _ensemble_facts(config: ModelConfig, where: str, libraries: str) -> str:
    """The training paragraph of an ensemble: how it was assembled, and each member's recipe."""
    args = config.args
    lines = [
        f"Not trained as a whole: assembled from {len(args.members)} trained models ({config.parameters:,} parameters"
        f" in all) whose pre-sigmoid outputs it averages, then calibrated on the validation split, in"
        f" {config.provenance.training_seconds / 60:.1f} min on {where}; {libraries}. Input framing ({args.framing}):"
        f" {FRAMINGS[args.framing]}. Members:",
        "",
    ]
    for index, member in enumerate(args.members, start=1):
        checksum = member.model_sha256[:12]
        lines.append(f"{index}. `{member.path}` (model.keras sha256 {checksum}): {_member_recipe(member)}")
    return "\n".join(lines)


def _member_recipe(member: EnsembleMember) -> str:
    """How one ensemble member was made: its training recipe, or, for an ensemble, where its members are listed."""
    assembled_from = get_spec(member.model).assembled_from if member.model is not None else None
    if assembled_from:
        return f"the {member.model} ensemble of trained {assembled_from}; its card lists them."
    policy = _augmentation_text(member.augment, member.augment_strength, member.normal_zoom, member.aspect_swap)
    start = f", started from {member.init_from} (sha256 {member.init_from_sha256[:12]})" if member.init_from else ""
    return (
        f"seed {member.seed}, augmentation ({policy}){start}; {member.epochs_run} epochs,"
        f" {member.training_seconds / 60:.1f} min."
    )


def refresh_card(directory: Path) -> None:
    """Re-render ``card.md`` from the model's verified config and metrics, then re-seal the directory.

    Raises:
        ModelRefused: If the directory does not verify (an edit is never sealed by re-rendering).
    """
    found = read_model_dir(directory, verify_model_file=True)
    (directory / CARD_FILE).write_text(render_card(found.config, found.metrics, card_sections(directory)))
    seal(directory, updated=[CARD_FILE])


CARD_METRICS = {
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity (pneumonia found)",
    "specificity": "Specificity (normal cleared)",
    "precision": "Precision (positive predictive value)",
    "f1": "F1 score",
    "roc_auc": "ROC AUC",
    "ece": "Expected calibration error",
}


def _preprocessing_text(name: str) -> str:
    """The registry's own one-line description of a model's preprocessing, in plain words."""
    summary = (get_spec(name).preprocess.__doc__ or "").strip().splitlines()[0]
    return summary.replace("``", "").replace("(n, h, w, 1) ", "").rstrip(".") + "."


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
