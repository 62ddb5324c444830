"""Latency benchmark of the shipped models on the sample images.

Measures, per model, the median and 95th-percentile latency of decode + preprocess +
predict, the same with the heatmap overlay added, and the time from a fresh process
start to its first prediction. Writes JSON; ``python -m pneumo_core report`` turns it
into the README table.

Usage:
    python -m pneumo_core bench --out bench/bench.json --repeats 20
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pneumo_core.artifacts import load_model_dir, shipped_model_dirs, write_json
from pneumo_core.diagnosis import diagnose, list_samples
from pneumo_core.gradcam import Explainer, methods_for, overlay
from pneumo_core.imaging import decode_grayscale, fit_within

FIRST_PREDICTION_SCRIPT = """
import sys, time
from pathlib import Path
from pneumo_core.artifacts import load_model_dir
from pneumo_core.inference import predict_bytes
loaded = load_model_dir(Path(sys.argv[1]))
predict_bytes(loaded, Path(sys.argv[2]).read_bytes())
"""


def _summary(seconds: list[float]) -> dict:
    values = np.asarray(seconds)
    return {"median_s": float(np.median(values)), "p95_s": float(np.percentile(values, 95)), "runs": len(values)}


def _first_prediction_seconds(model_dir: Path, image: Path) -> float:
    """Wall time of a new Python process that imports, loads the model and predicts once."""
    started = time.perf_counter()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run(
        [sys.executable, "-c", FIRST_PREDICTION_SCRIPT, str(model_dir), str(image)],
        check=True,
        capture_output=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return time.perf_counter() - started


def bench_model(model_dir: Path, images: list[bytes], repeats: int) -> dict:
    """Latency figures of one model over ``repeats`` passes through ``images``."""
    loaded = load_model_dir(model_dir)
    explainer = Explainer(loaded)
    method = methods_for(loaded)[0]
    predict_times, explain_times = [], []
    for _ in range(repeats + 1):
        for image in images:
            started = time.perf_counter()
            gray = decode_grayscale(image)
            result = diagnose(loaded, gray)
            predicted = time.perf_counter()
            heat = explainer.heatmap(loaded.square(gray), method, result.target_class)
            overlay(fit_within(gray), heat)
            finished = time.perf_counter()
            predict_times.append(predicted - started)
            explain_times.append(finished - started)
    warm = len(images)  # The first pass traces graphs; it is reported separately.
    return {
        "heatmap_method": method,
        "first_pass_predict_s": float(np.mean(predict_times[:warm])),
        "predict": _summary(predict_times[warm:]),
        "predict_and_heatmap": _summary(explain_times[warm:]),
    }


def run_benchmark(models_dir: Path, out: Path, repeats: int) -> dict:
    """Benchmark every shipped model and write the figures to ``out``."""
    samples = list_samples()
    if not samples:
        raise ValueError("No sample images in assets/samples to benchmark on.")
    images = [sample.path.read_bytes() for sample in samples]
    results = {}
    for name, model_dir in shipped_model_dirs(models_dir).items():
        print(f"benchmarking {name}…", file=sys.stderr)
        results[name] = bench_model(model_dir, images, repeats)
        results[name]["process_start_to_first_prediction_s"] = _first_prediction_seconds(model_dir, samples[0].path)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "images": [sample.path.name for sample in samples],
        "repeats": repeats,
        "models": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(f"wrote {out}", file=sys.stderr)
    return report
