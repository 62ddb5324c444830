"""Images per second of ``batch``: in this process vs Ray Data with one and two workers, on real X-rays.

Copies N X-rays (half NORMAL, half PNEUMONIA, the first by sorted name) from a Kermany-style folder
into a temporary folder outside the repository and scores them with each engine of
:mod:`pneumo_core.batch` (``local_tables`` or ``ray_tables`` into ``write_tables``). It checks that
every Ray run wrote the same rows as the in-process run, records the peak memory of the process or
of each Ray worker, and writes ``bench/ray_bench.json``.

The time to the first batch of rows (model load; for Ray also starting the actors) is noted, so the
fixed cost of a run and the steady rate after it can be told apart; the CPU time of this process
and of Ray's processes is added up, so the cost per image is known even when other work shares the
machine. Every engine runs ``--rounds`` times, interleaved, and the table shows its fastest run (the
least disturbed by other work). Run it on a quiet machine: the load average before every run is
recorded, and the share of the CPU that niced processes took (Ray runs its workers niced, so for
Ray runs that share is mostly the workers themselves; it is kept in the JSON, not in the table).

Usage:
    .venv/bin/python bench/ray_bench.py --data /path/to/chest_xray [--n 1000] [--model cnn] [--rounds 2]
    .venv/bin/python bench/ray_bench.py --table [--out bench/ray_bench.json]   # print the README table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pneumo_core.artifacts import MODELS_DIR  # noqa: E402
from pneumo_core.batch import RaySettings, local_tables, ray_session, ray_tables, write_tables  # noqa: E402
from pneumo_core.reading import DEFAULT_BATCH_SIZE  # noqa: E402

# (workers, CPUs per worker): the whole machine as one actor, one CPU each, and one actor per core.
RAY_POOLS = ((1, 1), (1, 2), (2, 1))
WORKER_TITLE = b"ReadBatch"  # Ray names an actor's process after its class: ray::MapWorker(MapBatches(ReadBatch))


@dataclass(frozen=True)
class Engine:
    """One configuration to time."""

    engine: str
    workers: int | None = None
    cpus_per_worker: int | None = None

    @property
    def file_name(self) -> str:
        """Where the full run's rows go."""
        return f"{self.engine}_{self.workers}x{self.cpus_per_worker}.parquet"

    @property
    def label(self) -> str:
        """A short name for tables."""
        if self.engine == "local":
            return "in-process"
        return f"Ray, {self.workers} worker{'s' if self.workers > 1 else ''} x {self.cpus_per_worker} CPU"


def copy_xrays(data: Path, count: int, into: Path) -> list[Path]:
    """Copy ``count`` X-rays, half from ``train/NORMAL`` and half from ``train/PNEUMONIA``, into ``into``."""
    copies = []
    for label, share in (("NORMAL", count // 2), ("PNEUMONIA", count - count // 2)):
        sources = sorted((data / "train" / label).iterdir())[:share]
        if len(sources) < share:
            raise ValueError(f"{data / 'train' / label} holds {len(sources)} images; {share} are needed.")
        for source in sources:
            copies.append(Path(shutil.copy(source, into / f"{label}_{source.name}")))
    return copies


def process_table() -> dict[int, tuple[int, int]]:
    """``{pid: (parent pid, user + system CPU clock ticks)}`` of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
            except (OSError, IndexError, ValueError):
                continue
    return table


def descendants(root: int, table: dict[int, tuple[int, int]]) -> set[int]:
    """Every process below ``root`` (Ray's own processes and workers when Ray was started by ``root``)."""
    below, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (parent, _) in table.items() if parent in frontier} - below
        below |= frontier
    return below


def status_kb(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``) in kB, 0 if the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return sum(int(line.split()[1]) for line in status.splitlines() if line.startswith(f"{field}:"))


def is_batch_actor(pid: int) -> bool:
    """Whether a process is a Ray actor of the batch engine (Ray titles it after the class)."""
    try:
        return WORKER_TITLE in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def descendants_rss_mb(root: int) -> float:
    """Resident memory of every process below ``root``, in MB."""
    return round(sum(status_kb(pid, "VmRSS") for pid in descendants(root, process_table())) / 1024, 1)


class ProcessTreeMonitor:
    """While a run lasts, samples this process and every process below it (Ray's, when it was started here).

    It adds up the CPU time they use (so a run's cost can be told apart from other work on the
    machine) and keeps the peak resident memory (VmHWM) of each batch actor.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.start_ticks: dict[int, int] = {}
        self.last_ticks: dict[int, int] = {}
        self.actor_peaks_kb: dict[int, int] = {}
        self._own_start = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessTreeMonitor:
        table = process_table()
        self.start_ticks = {pid: table[pid][1] for pid in descendants(os.getpid(), table)}
        self._own_start = sum(os.times()[:2])
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self._own_cpu = sum(os.times()[:2]) - self._own_start

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        table = process_table()
        for pid in descendants(os.getpid(), table):
            self.last_ticks[pid] = table[pid][1]
            if is_batch_actor(pid):
                self.actor_peaks_kb[pid] = max(status_kb(pid, "VmHWM"), self.actor_peaks_kb.get(pid, 0))

    def cpu_seconds(self) -> float:
        """CPU seconds used by this process and the processes below it during the run."""
        ticks = sum(last - self.start_ticks.get(pid, 0) for pid, last in self.last_ticks.items())
        return self._own_cpu + ticks / os.sysconf("SC_CLK_TCK")

    def actor_peak_mb(self) -> float | None:
        """The largest peak memory of a batch actor, in MB (``None`` when no actor ran)."""
        return round(max(self.actor_peaks_kb.values()) / 1024, 1) if self.actor_peaks_kb else None


def cpu_times() -> tuple[int, int]:
    """(time spent by niced processes, total time) over all CPUs since boot, in clock ticks."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[1], sum(fields)


def measure(engine: Engine, model_dir: Path, paths: list[Path], work: Path, weigh_process: bool = False) -> dict:
    """Time one engine over every path, noting when the first batch of rows arrived; rows go to ``work``.

    The first batch arrives after the fixed cost of a run (loading the model; for Ray also starting
    the actors) plus one batch, so the steady rate is measured over the rest of the run.
    """
    load_before, (nice_before, total_before) = os.getloadavg(), cpu_times()
    ordered = sorted(str(path) for path in paths)
    settings = RaySettings(workers=engine.workers or 1, cpus_per_worker=engine.cpus_per_worker or 1)
    started = time.perf_counter()
    first: list[tuple[float, int]] = []

    def stamped(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        for table in tables:
            if not first:
                first.append((time.perf_counter() - started, table.num_rows))
            yield table

    if engine.engine == "local":
        tables = local_tables(model_dir, ordered, DEFAULT_BATCH_SIZE)
    else:
        tables = ray_tables(model_dir, ordered, DEFAULT_BATCH_SIZE, settings)
    with ProcessTreeMonitor() as monitor:
        rows, _ = write_tables(stamped(tables), work / engine.file_name)
    seconds = time.perf_counter() - started
    nice_after, total_after = cpu_times()
    if rows != len(paths):
        raise RuntimeError(f"{engine.label} wrote {rows} rows for {len(paths)} files.")
    peak_mb = monitor.actor_peak_mb()
    if weigh_process:
        peak_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    first_seconds, first_rows = first[0]
    row = {
        "engine": engine.engine,
        "label": engine.label,
        "workers": engine.workers,
        "cpus_per_worker": engine.cpus_per_worker,
        "seconds": round(seconds, 2),
        "images_per_second": round(len(paths) / seconds, 1),
        "first_batch_seconds": round(first_seconds, 2),
        "steady_images_per_second": round((len(paths) - first_rows) / (seconds - first_seconds), 1),
        "cpu_seconds": round(monitor.cpu_seconds(), 1),
        "images_per_cpu_second": round(len(paths) / monitor.cpu_seconds(), 1),
        "peak_rss_mb": peak_mb,
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "cpu_share_of_niced_background_jobs": round((nice_after - nice_before) / (total_after - total_before), 3),
    }
    print(json.dumps(row), flush=True)
    return row


def compare(local_out: Path, ray_out: Path) -> dict:
    """Rows of a Ray run against the in-process rows: same images, decisions and reasons; probability gap."""
    local_rows, ray_rows = pq.read_table(local_out).to_pylist(), pq.read_table(ray_out).to_pylist()
    gaps = [
        abs(ray_row["probability"] - local_row["probability"])
        for ray_row, local_row in zip(ray_rows, local_rows, strict=True)
        if local_row["probability"] is not None and ray_row["probability"] is not None
    ]
    same = [{key: row[key] for key in ("image", "accepted", "reason", "label")} for row in ray_rows] == [
        {key: row[key] for key in ("image", "accepted", "reason", "label")} for row in local_rows
    ]
    return {
        "rows": len(ray_rows),
        "same_images_decisions_and_reasons": same,
        "max_abs_probability_difference": max(gaps, default=0.0),
    }


def run(data: Path, count: int, model: str, out: Path, rounds: int) -> dict:
    """Copy the X-rays, time every engine ``rounds`` times (interleaved), check the rows and write the JSON."""
    model_dir = MODELS_DIR / model
    engines = [Engine("local")] + [Engine("ray", workers, cpus) for workers, cpus in RAY_POOLS]
    with tempfile.TemporaryDirectory(prefix="ray_bench_") as temp:
        images, work = Path(temp) / "xrays", Path(temp) / "out"
        images.mkdir()
        work.mkdir()
        paths = copy_xrays(data, count, images)
        # The first in-process run comes before Ray starts, so this process's peak memory is its own.
        runs = [{"round": 1, **measure(engines[0], model_dir, paths, work, weigh_process=True)}]
        started = time.perf_counter()
        with ray_session():
            ray_start = time.perf_counter() - started
            time.sleep(5)  # let Ray's idle workers settle before weighing them
            ray_idle_mb = descendants_rss_mb(os.getpid())
            for round_number in range(1, rounds + 1):
                for engine in engines[1:] if round_number == 1 else engines:
                    runs.append({"round": round_number, **measure(engine, model_dir, paths, work)})
        checks = {engine.label: compare(work / engines[0].file_name, work / engine.file_name) for engine in engines[1:]}
    import keras
    import ray

    result = {
        "model": model,
        "images": count,
        "batch_size": DEFAULT_BATCH_SIZE,
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(),
            "ray": ray.__version__,
            "keras": keras.__version__,
        },
        "ray_start_seconds": round(ray_start, 2),
        "ray_idle_rss_mb": ray_idle_mb,
        "rounds": rounds,
        "best": [best_run(runs, engine.label) for engine in engines],
        "runs": runs,
        "ray_matches_in_process": checks,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def best_run(runs: list[dict], label: str) -> dict:
    """The fastest of an engine's runs (the least disturbed by other work), with the highest memory peak seen."""
    own = [run for run in runs if run["label"] == label]
    best = dict(max(own, key=lambda run: run["images_per_second"]))
    best["peak_rss_mb"] = max((run["peak_rss_mb"] for run in own if run["peak_rss_mb"] is not None), default=None)
    return best


def markdown_table(result: dict) -> str:
    """The README table of a ``ray_bench.json``."""
    lines = [
        f"`{result['model']}` on {result['images']:,} X-rays, {result['machine']['cpus']} CPU cores, "
        f"batches of {result['batch_size']}; starting Ray itself took {result['ray_start_seconds']:.0f} s "
        f"(not included below) and {result['ray_idle_rss_mb']:.0f} MB of memory when idle. "
        f"Best of {result['rounds']} interleaved runs per engine.",
        "",
        "| engine | images/s (whole run) | images/s (after the first batch) | first batch after (s) "
        "| images per CPU-second | peak memory per process (MB) | load average before |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in result["best"]:
        lines.append(
            f"| {run['label']} | {run['images_per_second']:.1f} | {run['steady_images_per_second']:.1f} "
            f"| {run['first_batch_seconds']:.1f} | {run['images_per_cpu_second']:.1f} | {run['peak_rss_mb']:.0f} "
            f"| {run['load_average_before'][0]:.2f} |"
        )
    lines += ["", matching_sentence(result)]
    return "\n".join(lines)


def matching_sentence(result: dict) -> str:
    """One sentence on whether every Ray run wrote the same rows as the in-process run."""
    checks = result["ray_matches_in_process"].values()
    if not all(check["same_images_decisions_and_reasons"] for check in checks):
        return "**At least one Ray run did not write the same rows as the in-process run** (see the JSON)."
    rows = {check["rows"] for check in checks}
    largest = max(check["max_abs_probability_difference"] for check in checks)
    return (
        f"Every Ray run wrote the same {', '.join(f'{n:,}' for n in sorted(rows))} rows as the in-process run "
        f"(same images, decisions and reasons; probabilities within {largest:.0e})."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="a Kermany-style folder with train/NORMAL and train/PNEUMONIA")
    parser.add_argument("--n", type=int, default=1000, help="how many X-rays to score")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "ray_bench.json")
    parser.add_argument("--rounds", type=int, default=2, help="runs per engine, interleaved; the table shows the best")
    parser.add_argument("--table", action="store_true", help="print the README table of --out and stop")
    args = parser.parse_args()
    if not args.table:
        if args.data is None:
            parser.error("--data is required to run the benchmark")
        run(args.data, args.n, args.model, args.out, args.rounds)
    print(markdown_table(json.loads(args.out.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
