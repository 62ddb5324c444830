"""Memory benchmark of ``python -m pneumo_core predict --csv``: peak RSS for 100, 5,000 and 10,000 images.

Builds folders of X-ray-sized JPEGs in a temporary directory (never in the repository): by default
synthetic 1400x1100 chest-like images (a few distinct ones, hard-linked many times, so the folder costs
little disk while every file is still read and decoded), or, with ``--source DIR``, links to the images
of a real dataset folder, cycled as needed. For each size it runs the real CLI in a child process,
samples its resident memory twice a second, and takes the child's peak RSS from the kernel
(``wait4``'s ``ru_maxrss``). The result goes to ``bench/batch_memory.json``: streaming in batches
should make 10,000 images need no more memory than 100.

Usage:
    .venv/bin/python bench/batch_memory.py [--model cnn] [--sizes 100 5000 10000] [--source DIR] [--append]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "batch_memory.json"
IMAGE_SIZE = (1400, 1100)  # width, height: the size of a typical Kermany original
DISTINCT_IMAGES = 16
SAMPLE_EVERY_S = 0.5
TIMELINE_POINTS = 20


def synthetic_chest(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A chest-X-ray-like grayscale JPEG: dark lungs in a brighter body, ribs-like bands, noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    body = 150 - 60 * (((xx - width / 2) / (width / 2)) ** 2)
    image = body.copy()
    for centre in (0.32, 0.68):
        lung = ((xx - centre * width) / (0.17 * width)) ** 2 + ((yy - 0.5 * height) / (0.33 * height)) ** 2
        image = np.where(lung < 1, 60 + 40 * lung + rng.uniform(-10, 10), image)
    image += 12 * np.sin(yy / (height / 18) + rng.uniform(0, np.pi))
    image += rng.normal(0, 6, image.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), mode="L").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def build_folder(root: Path, count: int, source: Path | None, rng: np.random.Generator) -> str:
    """Fill ``root/NORMAL`` and ``root/PNEUMONIA`` with ``count`` images; returns a description of them."""
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
    if source is not None:
        originals = sorted(path for path in source.rglob("*") if path.suffix.lower() in {".jpeg", ".jpg", ".png"})
        if not originals:
            raise SystemExit(f"No JPEG or PNG images under {source}.")
        link = os.symlink
        description = f"links to the {len(originals)} images of {source.name}, cycled"
    else:
        bases = root / "bases"
        bases.mkdir()
        originals = []
        for index in range(DISTINCT_IMAGES):
            path = bases / f"base_{index}.jpeg"
            path.write_bytes(synthetic_chest(rng, *IMAGE_SIZE))
            originals.append(path)
        link = os.link
        mean_kb = np.mean([path.stat().st_size for path in originals]) / 1024
        description = (
            f"synthetic {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} grayscale JPEGs (~{mean_kb:.0f} KB, "
            f"{DISTINCT_IMAGES} distinct, hard-linked)"
        )
    for index in range(count):
        label = "NORMAL" if index % 2 else "PNEUMONIA"
        link(originals[index % len(originals)], root / label / f"image_{index:05d}.jpeg")
    return description


def measure(model: str, folder: Path, csv_path: Path, batch_size: int) -> dict:
    """Run the predict CLI on ``folder``: its peak RSS (from ``wait4``), an RSS timeline, wall time, exit code."""
    command = [
        sys.executable,
        "-m",
        "pneumo_core",
        "predict",
        "--model",
        model,
        str(folder / "NORMAL"),
        str(folder / "PNEUMONIA"),
        "--csv",
        str(csv_path),
        "--batch-size",
        str(batch_size),
    ]
    started = time.monotonic()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=errors)
        timeline = []
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            rss = _rss_mb(process.pid)
            if rss is not None:
                timeline.append((round(time.monotonic() - started, 1), rss))
            time.sleep(SAMPLE_EVERY_S)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        errors.seek(0)
        stderr = errors.read().decode(errors="replace").strip()
    rows, refused = _count_rows(csv_path)
    return {
        "exit_code": process.returncode,
        "rows_written": rows,
        "refused": refused,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports kilobytes
        "seconds": round(seconds, 1),
        "images_per_second": round(rows / seconds, 1) if seconds else None,
        "rss_timeline_mb": _thin(timeline),
        "summary": stderr.splitlines()[-1] if stderr else "",
    }


def _count_rows(csv_path: Path) -> tuple[int, int]:
    """Rows in the CLI's CSV and how many of them were refused (``accepted`` false)."""
    if not csv_path.exists():
        return 0, 0
    with csv_path.open(newline="") as handle:
        accepted = [row["accepted"] for row in csv.DictReader(handle)]
    return len(accepted), sum(value != "True" for value in accepted)


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _thin(timeline: list[tuple[float, float]]) -> list[list[float]]:
    """At most ``TIMELINE_POINTS`` evenly spaced ``[seconds, MB]`` samples (first and last kept)."""
    if len(timeline) <= TIMELINE_POINTS:
        return [list(point) for point in timeline]
    keep = np.unique(np.linspace(0, len(timeline) - 1, TIMELINE_POINTS).round().astype(int))
    return [list(timeline[index]) for index in keep]


def _git_describe() -> str:
    """The commit the benchmark ran on (``git describe --always --dirty``), or "unknown"."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 5000, 10000])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--source", type=Path, help="a folder of real images to link to (default: synthetic)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--append", action="store_true", help="keep the runs of other sizes already in --out")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    runs = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="batch_memory_") as work:
            folder = Path(work) / "images"
            description = build_folder(folder, size, args.source, rng)
            result = measure(args.model, folder, Path(work) / "out.csv", args.batch_size)
        runs.append({"images": size, **result})
        print(f"{size} images: peak RSS {result['peak_rss_mb']} MB, {result['seconds']} s", file=sys.stderr)
    if args.append and args.out.is_file():
        sizes = {run["images"] for run in runs}
        runs += [run for run in json.loads(args.out.read_text())["runs"] if run["images"] not in sizes]
        runs.sort(key=lambda run: run["images"])
    peaks = {run["images"]: run["peak_rss_mb"] for run in runs}
    report = {
        "command": f"python -m pneumo_core predict --model {args.model} NORMAL/ PNEUMONIA/ --csv out.csv "
        f"--batch-size {args.batch_size}",
        "images": description,
        "machine": {"cpu_cores": os.cpu_count(), "python": platform.python_version()},
        "software": _git_describe(),
        "runs": runs,
        "peak_rss_growth_mb": round(peaks[max(peaks)] - peaks[min(peaks)], 1),
        "note": "peak_rss_mb is the CLI process's maximum resident set size from the kernel (ru_maxrss); "
        "peak_rss_growth_mb compares the largest and the smallest run. Synthetic images are mostly refused by "
        "the model's out-of-distribution gate (they are not real X-rays; exit code 1), but every image is still "
        "decoded and passed through the model, whose features the gate judges, so memory and time are those of "
        "a real batch. The machine's two cores were shared with other work, so time is indicative only.",
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
