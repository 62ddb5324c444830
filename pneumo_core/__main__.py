"""Command line of the pneumonia X-ray pipeline.

Usage:
    python -m pneumo_core split    --data DIR
    python -m pneumo_core train    --model NAME --data DIR [--epochs N] [--backbone-weights PATH] [--out models/]
                                   [--augment basic|robust] [--framing squash|trim|trim_equalize] [--subtype-weight W]
                                   [--init-from MODEL_DIR] [--learning-rate LR] [--consistency-weight W]
                                   [--normal-zoom Z] [--aspect-swap F]
    python -m pneumo_core train    --model cnn_ensemble --members MODEL_DIR MODEL_DIR... [--data DIR] [--out models/]
    python -m pneumo_core train    --model xception_cnn_ensemble --members XCEPTION_DIR CNN_ENSEMBLE_DIR [--data DIR]
    python -m pneumo_core evaluate --model NAME [--data DIR] [--split auto|all|train|val|test] [--out FILE.json]
    python -m pneumo_core predict  --model NAME FILE_OR_FOLDER... [--csv out.csv] [--json] [--batch-size N]
    python -m pneumo_core batch    --model NAME --data DIR_OR_GLOB... --out FILE.parquet|.csv [--engine local|ray]
                                   [--address ADDR] [--workers N] [--cpus-per-worker N] [--batch-size N]
    python -m pneumo_core bench    [--out bench.json] [--repeats N]
    python -m pneumo_core report   [--readme README.md]
    python -m pneumo_core tune     --model NAME --data DIR [--max-trials N] [--budget-minutes M] [--proxy-size PX]
    python -m pneumo_core candidate --model NAME --candidate DIR --label TEXT
    python -m pneumo_core fit-gate --model NAME --data DIR [--models-dir models/] [--split-file FILE] [--no-figures]
    python -m pneumo_core fit-subtype --model NAME --data DIR [--models-dir models/] [--split-file FILE]
    python -m pneumo_core robustness --model NAME [--data DIR] [--split-file F] [--split test|val] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pneumo_core import data
from pneumo_core.artifacts import MODELS_DIR
from pneumo_core.imaging import FRAMINGS
from pneumo_core.registry import get_spec, model_names


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with one subcommand per task."""
    parser = argparse.ArgumentParser(prog="python -m pneumo_core", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    split = commands.add_parser("split", help="create the patient-grouped train/val/test split file")
    split.add_argument("--data", type=Path, default=data.DEFAULT_DATA_ROOT)
    split.add_argument("--out", type=Path, default=data.DEFAULT_SPLIT_FILE)

    train = commands.add_parser("train", help="train a registry model and write models/<name>/")
    train.add_argument("--model", required=True, choices=model_names())
    train.add_argument("--data", type=Path, default=data.DEFAULT_DATA_ROOT)
    train.add_argument("--epochs", type=int, help="epochs (head epochs for transfer models)")
    train.add_argument("--fine-tune-epochs", type=int, help="fine-tuning epochs (transfer models)")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--backbone-weights", help="local weights file, 'imagenet' (needs internet) or 'none'")
    train.add_argument("--out", type=Path, default=MODELS_DIR)
    train.add_argument("--run-dir", type=Path, default=Path("runs"), help="checkpoints and logs")
    train.add_argument("--split-file", type=Path, default=data.DEFAULT_SPLIT_FILE)
    train.add_argument("--seed", type=int, default=data.SPLIT_SEED)
    train.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs")
    train.add_argument(
        "--params", type=Path, help="hyper-parameters: a tuning.json (its best trial) or a JSON object of values"
    )
    train.add_argument("--no-gate", action="store_true", help="do not fit the out-of-distribution gate afterwards")
    train.add_argument("--no-subtype", action="store_true", help="do not fit the bacterial/viral head afterwards")
    train.add_argument(
        "--augment",
        choices=("basic", "robust"),
        help="augmentation policy; default from the registry",
    )
    train.add_argument("--augment-strength", type=float, default=1.0, help="scales every augmentation range")
    train.add_argument(
        "--framing",
        choices=tuple(FRAMINGS),
        help="how an image becomes the square input: squash the whole image, trim uniform borders first, or"
        " trim and histogram-equalise; default from the registry",
    )
    train.add_argument("--learning-rate", type=float, help="learning rate (head phase of transfer models)")
    train.add_argument(
        "--init-from", type=Path, help="start from a trained model folder's weights (same architecture and --params)"
    )
    train.add_argument("--fine-tune-from", help="first layer to fine-tune (transfer models); default from the registry")
    train.add_argument("--fine-tune-learning-rate", type=float, help="fine-tuning learning rate (transfer models)")
    train.add_argument(
        "--subtype-weight",
        type=float,
        default=0.0,
        help="also train a bacterial-vs-viral output on the pneumonia images with this loss weight (0: off)",
    )
    train.add_argument(
        "--consistency-weight",
        type=float,
        default=0.0,
        help="also feed a second, independently augmented view of each X-ray and weigh the Jensen-Shannon"
        " divergence of the two readings with this weight, so that framing and exposure stop moving the reading"
        " (0: off; doubles the training time)",
    )
    train.add_argument(
        "--normal-zoom",
        type=float,
        default=0.0,
        help="also zoom into half of the NORMAL training images by up to 1+Z per axis, so that a tightly framed"
        " chest stops reading as pneumonia (0: off)",
    )
    train.add_argument(
        "--aspect-swap",
        type=float,
        default=0.0,
        help="also give half of the training images the other class's proportions by zooming in on one axis by"
        " about F (NORMAL vertically, PNEUMONIA horizontally; 1.24 is the ratio of the classes' median aspects in"
        " the training split), so that narrow- or wide-looking anatomy stops telling the classes apart (0: off)",
    )
    train.add_argument(
        "--members",
        type=Path,
        nargs="+",
        default=(),
        metavar="MODEL_DIR",
        help="for an ensemble model: the trained model folders to average (at least two); nothing is trained",
    )

    evaluate = commands.add_parser("evaluate", help="metrics of a trained model on a folder of images")
    evaluate.add_argument("--model", required=True, choices=model_names())
    evaluate.add_argument("--data", type=Path, default=data.DEFAULT_DATA_ROOT)
    evaluate.add_argument("--split", default="auto", choices=["auto", "all", "train", "val", "test"])
    evaluate.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    evaluate.add_argument("--out", type=Path, help="write the metrics JSON here")

    predict = commands.add_parser(
        "predict",
        help="probability and label for image files, folders (recursive) and zips; exit 1 if any is refused",
    )
    predict.add_argument("--model", required=True, choices=model_names())
    predict.add_argument("images", nargs="+", metavar="FILE_OR_FOLDER", help="images, folders, .zip files or globs")
    predict.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    predict.add_argument("--csv", type=Path, help="write one row per image to this CSV file")
    predict.add_argument("--json", action="store_true", help="print one JSON object per line")
    predict.add_argument("--batch-size", type=_positive_int, default=32, help="images decoded at once (default 32)")

    batch = commands.add_parser("batch", help="score a folder or glob of X-rays into one Parquet or CSV file")
    batch.add_argument("--model", required=True, choices=model_names())
    batch.add_argument("--data", required=True, nargs="+", help="folders, files or quoted glob patterns ('a/**/*.dcm')")
    batch.add_argument("--out", required=True, type=Path, help="a .parquet or .csv file: one row per input file")
    batch.add_argument("--engine", choices=["local", "ray"], help="default: ray if an address is set, else local")
    batch.add_argument("--address", help="a running Ray cluster; default RAY_ADDRESS, else Ray starts on this machine")
    batch.add_argument("--workers", type=int, default=1, help="Ray actors, each loading the model once")
    batch.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs (and TensorFlow threads) per Ray actor")
    batch.add_argument("--batch-size", type=int, help="images decoded and predicted together (default 32)")
    batch.add_argument("--models-dir", type=Path, default=MODELS_DIR)

    bench = commands.add_parser("bench", help="latency benchmark of the shipped models")
    bench.add_argument("--out", type=Path, default=Path("bench/bench.json"))
    bench.add_argument("--repeats", type=int, default=20)
    bench.add_argument("--models-dir", type=Path, default=MODELS_DIR)

    tune = commands.add_parser("tune", help="hyper-parameter search (KerasTuner); writes models/<name>/tuning.json")
    tune.add_argument("--model", required=True, choices=model_names())
    tune.add_argument("--data", type=Path, default=data.DEFAULT_DATA_ROOT)
    tune.add_argument("--max-trials", type=int, default=30, help="total trials of the project (resumed ones count)")
    tune.add_argument("--budget-minutes", type=float, default=85.0, help="time budget of this run of the search")
    tune.add_argument("--proxy-size", type=int, default=96, help="input size of the trials (smaller than the model's)")
    tune.add_argument("--epochs-per-trial", type=int, default=6)
    tune.add_argument("--batch-size", type=int, help="default: the model's training batch size")
    tune.add_argument("--out", type=Path, default=MODELS_DIR, help="tuning.json goes to OUT/<name>/")
    tune.add_argument("--run-dir", type=Path, default=Path("runs/tune"), help="KerasTuner project (resumable)")
    tune.add_argument("--split-file", type=Path, default=data.DEFAULT_SPLIT_FILE)
    tune.add_argument("--seed", type=int, default=data.SPLIT_SEED)

    gate = commands.add_parser(
        "fit-gate", help="fit the out-of-distribution gate of a trained model and measure its figures"
    )
    gate.add_argument("--model", required=True, choices=model_names())
    gate.add_argument("--data", type=Path, default=data.DEFAULT_DATA_ROOT)
    gate.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    gate.add_argument("--split-file", type=Path, default=data.DEFAULT_SPLIT_FILE)
    gate.add_argument("--no-figures", action="store_true", help="skip measuring the test, perturbed and negative sets")

    candidate = commands.add_parser(
        "candidate", help="judge a retrained model against the shipped one (validation and robustness)"
    )
    candidate.add_argument("--model", required=True, choices=model_names())
    candidate.add_argument("--candidate", type=Path, required=True, help="the retrained model's directory")
    candidate.add_argument("--label", required=True, help='what the candidate is, e.g. "tuned settings"')
    candidate.add_argument("--models-dir", type=Path, default=MODELS_DIR)

    subtype = commands.add_parser(
        "fit-subtype", help="fit the bacterial-vs-viral head on a trained model's frozen features and measure it"
    )
    subtype.add_argument("--model", required=True, choices=model_names())
    subtype.add_argument("--data", type=Path, default=data.DEFAULT_DATA_ROOT)
    subtype.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    subtype.add_argument("--split-file", type=Path, default=data.DEFAULT_SPLIT_FILE)

    robustness = commands.add_parser(
        "robustness",
        help="readings under framing, exposure and other perturbations; writes models/<name>/robustness.json",
    )
    robustness.add_argument("--model", required=True, choices=model_names())
    robustness.add_argument("--data", type=Path, default=data.DEFAULT_DATA_ROOT)
    robustness.add_argument("--split-file", type=Path, default=data.DEFAULT_SPLIT_FILE)
    robustness.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    robustness.add_argument(
        "--out", type=Path, help="write here (needed unless measuring the whole internal test split)"
    )
    robustness.add_argument("--limit", type=_positive_int, help="measure a random subset of this many images")
    robustness.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="internal split measured: test (reported; robustness.json) or val (for choosing; robustness_val.json)",
    )

    report = commands.add_parser(
        "report", help="regenerate the model cards and README tables from metrics.json and bench.json"
    )
    report.add_argument("--readme", type=Path, default=Path("README.md"))
    report.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run_split(args) -> int:
    digest = data.write_split(data.make_split(data.list_images(args.data)), args.out)
    print(f"wrote {args.out} (sha256 {digest})")
    return 0


def run_train(args) -> int:
    from pneumo_core.train import TrainArgs, train, with_params_file

    spec = get_spec(args.model)
    if not spec.shippable and args.backbone_weights in (None, "imagenet"):
        print(f"note: {spec.unavailable_reason}", file=sys.stderr)
    defaults = spec.train
    resolved = TrainArgs(
        model=spec.name,
        data=str(args.data),
        out=str(args.out),
        epochs=args.epochs if args.epochs is not None else defaults.epochs,
        fine_tune_epochs=args.fine_tune_epochs if args.fine_tune_epochs is not None else defaults.fine_tune_epochs,
        batch_size=args.batch_size or defaults.batch_size,
        learning_rate=defaults.learning_rate,
        fine_tune_learning_rate=args.fine_tune_learning_rate or defaults.fine_tune_learning_rate,
        fine_tune_from=args.fine_tune_from or defaults.fine_tune_from,
        backbone_weights=args.backbone_weights or ("imagenet" if spec.uses_backbone_weights else None),
        split_file=str(args.split_file),
        seed=args.seed,
        patience=args.patience,
        run_dir=str(args.run_dir),
        augment_strength=args.augment_strength,
        augment=args.augment or defaults.augment,
        framing=args.framing or defaults.framing,
        subtype_weight=args.subtype_weight,
        consistency_weight=args.consistency_weight,
        normal_zoom=args.normal_zoom,
        aspect_swap=args.aspect_swap,
        init_from=None if args.init_from is None else str(args.init_from),
    )
    if args.params is not None:
        resolved = with_params_file(resolved, spec, args.params)
    if args.learning_rate is not None:  # after the params file: the command line wins
        resolved = replace(resolved, learning_rate=args.learning_rate)
    members = tuple(str(path) for path in args.members)
    fitted = train(spec, resolved, fit_gate=not args.no_gate, fit_subtype=not args.no_subtype, members=members)
    print(f"wrote {fitted}")
    return 0


def _load(name: str, models_dir: Path):
    from pneumo_core.artifacts import load_model_dir

    return load_model_dir(_shipped_dir(name, models_dir))


def _shipped_dir(name: str, models_dir: Path) -> Path:
    from pneumo_core.catalog import catalog

    entry = next(entry for entry in catalog(models_dir) if entry.name == name)
    if not entry.shipped:
        raise ValueError(f"No trained {name} in {models_dir}. {entry.unavailable_reason}")
    return entry.directory


def run_evaluate(args) -> int:
    from pneumo_core.artifacts import write_json
    from pneumo_core.evaluate import evaluate_folder

    result = evaluate_folder(_load(args.model, args.models_dir), args.data, args.split)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
        print(f"wrote {args.out}")
    print(f"{result['model']} on {result['data']}: {_figures(result['metrics'])} (threshold {result['threshold']:.3f})")
    if result["gated"]:
        accepted = result["metrics_accepted"]
        on_accepted = "none accepted" if accepted is None else f"on the {accepted['n']} accepted: {_figures(accepted)}"
        print(f"{result['n_refused']} refused by the gate; {on_accepted}")
    return 0


def _figures(metrics: dict) -> str:
    return ", ".join(
        f"{key} {'n/a' if metrics[key] is None else format(metrics[key], '.3f')}"
        for key in ("accuracy", "sensitivity", "specificity", "roc_auc")
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_predict(args) -> int:
    """Stream every image through the reader; CSV/JSON/text out, a progress bar on stderr."""
    import csv

    from pneumo_core.batch_scoring import ProgressBar, command_line_batch, stream
    from pneumo_core.reading import Reader

    batch = command_line_batch(args.images)
    for skipped in batch.skipped:
        print(f"warning: skipped {skipped.name}: {skipped.reason}", file=sys.stderr)
    reader = Reader(_load(args.model, args.models_dir))
    refused = 0
    bar = ProgressBar(batch.count)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(args.csv.open("w", newline="")) if args.csv else None
        writer = None
        for row in stream(reader, batch, args.batch_size, progress=lambda done, _total: bar.update(done)):
            item = row.to_row()
            refused += not row.reading.accepted
            if out is not None:
                flat = item | row.reading.subtype_fields(flat=True)
                if writer is None:
                    writer = csv.DictWriter(out, fieldnames=list(flat))
                    writer.writeheader()
                writer.writerow(flat)
            if args.json:
                bar.write(json.dumps(item | row.reading.subtype_fields()))
            elif out is None:
                bar.write(_predict_line(row))
    bar.close()
    written = f"; wrote {args.csv}" if args.csv else ""
    print(f"read {batch.count - refused} of {batch.count} images, {refused} refused{written}", file=sys.stderr)
    return 1 if refused else 0


def _predict_line(row) -> str:
    reading = row.reading
    if not reading.accepted:
        return f"{row.name}: refused: {reading.reason}"
    line = f"{row.name}: {reading.label} (p(pneumonia) = {reading.probability:.3f}, threshold {reading.threshold:.3f})"
    if reading.subtype is not None:
        line += f"; subtype {reading.subtype.call} (p(bacterial | pneumonia) = {reading.subtype.bacteria:.3f})"
    return line


def run_batch(args) -> int:
    from pneumo_core.batch import RaySettings, choose_engine, score_files
    from pneumo_core.reading import DEFAULT_BATCH_SIZE
    from pneumo_core.sources import expand_inputs

    engine = choose_engine(args.engine, args.address)
    result = score_files(
        _shipped_dir(args.model, args.models_dir),
        expand_inputs(args.data),
        args.out,
        engine=engine,
        batch_size=args.batch_size or DEFAULT_BATCH_SIZE,
        ray_settings=RaySettings(address=args.address, workers=args.workers, cpus_per_worker=args.cpus_per_worker),
    )
    print(
        f"wrote {result.out}: {result.rows} rows, {result.refused} refused, "
        f"{result.seconds:.1f} s ({result.images_per_second:.1f} images/s, {engine} engine)"
    )
    return 0


def run_bench(args) -> int:
    from pneumo_core.bench import run_benchmark

    run_benchmark(args.models_dir, args.out, args.repeats)
    return 0


def run_report(args) -> int:
    from pneumo_core.report import update_readme

    update_readme(args.readme, args.models_dir)
    return 0


def run_tune(args) -> int:
    from pneumo_core.tune import TuneArgs, tune

    spec = get_spec(args.model)
    resolved = TuneArgs(
        model=spec.name,
        data=str(args.data),
        out=str(args.out),
        run_dir=str(args.run_dir),
        split_file=str(args.split_file),
        max_trials=args.max_trials,
        budget_minutes=args.budget_minutes,
        proxy_size=args.proxy_size,
        epochs_per_trial=args.epochs_per_trial,
        batch_size=args.batch_size or spec.train.batch_size,
        seed=args.seed,
    )
    print(f"wrote {tune(spec, resolved)}")
    return 0


def run_fit_gate(args) -> int:
    from pneumo_core.gate_figures import fit_gate_dir

    params = fit_gate_dir(args.models_dir / args.model, args.data, args.split_file, measure=not args.no_figures)
    print(f"wrote the gate of {args.model}: {params.settings.fitted_on.val_acceptance:.1%} of validation accepted")
    if params.settings.report is not None:
        report = params.settings.report
        print(f"internal test {report.internal_test.rate:.1%} accepted, negatives {report.negatives.rate:.1%} refused")
    return 0


def run_robustness(args) -> int:
    from pneumo_core import robustness
    from pneumo_core.artifacts import read_model_dir

    directory = _shipped_dir(args.model, args.models_dir)
    trained_on = read_model_dir(directory).config.data.split_hash
    selection = robustness.select_images(args.data, args.split_file, trained_on, args.limit, split=args.split)
    target = robustness.destination(directory, selection, args.out)  # Refuse before loading the model.
    loaded = _load(args.model, args.models_dir)
    print(f"{args.model}: {len(selection.paths)} images ({selection.source.description})", file=sys.stderr)
    result = robustness.measure(loaded, selection, progress=lambda line: print(line, file=sys.stderr))
    for line in robustness.progress_lines(result):
        print(line, file=sys.stderr)
    robustness.save_robustness(result, target, loaded.directory)
    print(robustness.worst_cases_sentence(args.model, result).replace("`", ""))
    for criterion in result.summary.criteria:
        print(f"{robustness.criterion_label(criterion)}: {robustness.criterion_text(criterion)}")
    print(f"wrote {target} ({result.seconds:.0f} s)")
    return 0


def run_fit_subtype(args) -> int:
    from pneumo_core.subtype import describe, fit_subtype_dir

    params = fit_subtype_dir(args.models_dir / args.model, args.data, args.split_file)
    print(f"wrote the subtype head of {args.model}: {describe(params.settings)}")
    return 0


def run_candidate(args) -> int:
    from pneumo_core.candidate import judge_candidate

    payload = judge_candidate(_shipped_dir(args.model, args.models_dir), args.candidate, args.label)
    for check, passed in payload["checks"].items():
        print(f"{check}: {'yes' if passed else 'no'}")
    print("the candidate replaces the shipped model" if payload["replace"] else "the shipped model stays")
    return 0


COMMANDS = {
    "split": run_split,
    "train": run_train,
    "evaluate": run_evaluate,
    "predict": run_predict,
    "batch": run_batch,
    "bench": run_bench,
    "report": run_report,
    "tune": run_tune,
    "fit-gate": run_fit_gate,
    "fit-subtype": run_fit_subtype,
    "robustness": run_robustness,
    "candidate": run_candidate,
}

if __name__ == "__main__":
    sys.exit(main())
