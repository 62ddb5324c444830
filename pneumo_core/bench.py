"""Latency benchmark of the shipped models on the sample images.

Measures, per model, the median and 95th-percentile latency of a reading from bytes
(``read_xray`` then ``Reader.read``), the same with the heatmap overlay added, one image at a time against a batch of 16
(the per-call overhead), and a fresh process's cold start split by phase (TensorFlow import,
project import, model load, first prediction). Writes JSON; ``python -m pneumo_core report``
turns it into the README table. The browser figures (page ready after launch, ten sessions at
once) come from ``bench/load_test.py``.

Usage:
    python -m pneumo_core bench --out bench/bench.json --repeats 20
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pneumo_core.artifacts import load_model_dir, shipped_model_dirs, write_json
from pneumo_core.diagnosis import list_samples
from pneumo_core.gate_figures import measure_cost
from pneumo_core.gradcam import display_pair, methods_for
from pneumo_core.imaging import read_xray
from pneumo_core.reading import Reader

COLD_START_SCRIPT = """
import json, sys, time
from pathlib import Path
started = time.perf_counter()
import tensorflow
imported_tensorflow = time.perf_counter()
from pneumo_core.artifacts import load_model_dir
from pneumo_core.imaging import read_xray_file
from pneumo_core.reading import Reader
imported_project = time.perf_counter()
reader = Reader(load_model_dir(Path(sys.argv[1])))
loaded = time.perf_counter()
xray = read_xray_file(Path(sys.argv[2]))
reader.read(xray)
first = time.perf_counter()
first_wall = time.time()
print(json.dumps({
    "first_prediction_at": first_wall,
    "import_tensorflow_s": imported_tensorflow - started,
    "import_project_s": imported_project - imported_tensorflow,
    "load_model_s": loaded - imported_project,
    "first_prediction_s": first - loaded,
}))
"""
BATCH = 16


def _summary(seconds: list[float]) -> dict:
    values = np.asarray(seconds)
    return {"median_s": float(np.median(values)), "p95_s": float(np.percentile(values, 95)), "runs": len(values)}


def cold_start(model_dir: Path, image: Path) -> dict:
    """Phases of a new Python process that imports, loads the model and predicts once.

    ``process_start_to_first_prediction_s`` is the wall-clock time from spawning the interpreter to
    the moment the child holds its first prediction (the child's exit is not counted); the phases
    inside it are measured by the child itself.
    """
    started = time.time()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    completed = subprocess.run(
        [sys.executable, "-c", COLD_START_SCRIPT, str(model_dir), str(image)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    phases = json.loads(completed.stdout.strip().splitlines()[-1])
    total = phases.pop("first_prediction_at") - started
    return {"process_start_to_first_prediction_s": total, **phases}


def single_vs_batched(reader: Reader, xrays: list, repeats: int) -> dict:
    """Per-image forward time for one image at a time and for a batch of :data:`BATCH`, and their ratio."""
    batch = (xrays * BATCH)[:BATCH]
    reader.read_many(batch)
    single, batched = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        reader.read(batch[0])
        single.append(time.perf_counter() - started)
        started = time.perf_counter()
        reader.read_many(batch)
        batched.append((time.perf_counter() - started) / BATCH)
    single_s, batched_s = float(np.median(single)), float(np.median(batched))
    return {"single_s": single_s, "batched_per_image_s": batched_s, "ratio": single_s / batched_s}


def bench_model(model_dir: Path, images: list[bytes], repeats: int) -> dict:
    """Latency figures of one model over ``repeats`` passes through ``images``."""
    reader = Reader(load_model_dir(model_dir))
    single_batched = single_vs_batched(reader, [read_xray(image) for image in images], repeats)
    method = methods_for(reader.loaded)[0]
    predict_times, explain_times = [], []
    for _ in range(repeats + 1):
        for image in images:
            started = time.perf_counter()
            xray = read_xray(image)
            reading = reader.read(xray)
            predicted = time.perf_counter()
            heat = reader.heatmap(xray, method, reading.target_class)
            display_pair(xray.gray, heat)
            finished = time.perf_counter()
            predict_times.append(predicted - started)
            explain_times.append(finished - started)
    warm = len(images)  # The first pass traces graphs; it is reported separately.
    return {
        "heatmap_method": method,
        "first_pass_predict_s": float(np.mean(predict_times[:warm])),
        "predict": _summary(predict_times[warm:]),
        "predict_and_heatmap": _summary(explain_times[warm:]),
        "single_vs_batched": single_batched,
        "gate": _gate_cost(reader, images, repeats),
    }


def _gate_cost(reader: Reader, images: list[bytes], repeats: int) -> dict | None:
    """What the out-of-distribution gate adds per image (ms; included in ``predict``), or None without a gate."""
    if reader.gate is None:
        return None
    return dataclasses.asdict(measure_cost(reader.gate, [read_xray(image).gray for image in images], repeats))


def run_benchmark(models_dir: Path, out: Path, repeats: int) -> dict:
    """Benchmark every shipped model and write the figures to ``out``."""
    samples = list_samples()
    if not samples:
        raise ValueError("No sample images in assets/samples to benchmark on.")
    images = [sample.path.read_bytes() for sample in samples]
    load_before, results = os.getloadavg(), {}
    for name, model_dir in shipped_model_dirs(models_dir).items():
        print(f"benchmarking {name}…", file=sys.stderr)
        results[name] = bench_model(model_dir, images, repeats)
        results[name]["cold_start"] = cold_start(model_dir, samples[0].path)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "images": [sample.path.name for sample in samples],
        "repeats": repeats,
        "models": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(f"wrote {out}", file=sys.stderr)
    return report
