"""Score a whole archive of X-rays into one Parquet or CSV file, in this process or on Ray Data.

Both engines run the one shared pipeline, :func:`pneumo_core.reading.read_sources` (bounded file
read, decode, input checks, one batched forward pass per batch), so they give the same
probabilities. Every input file gives exactly one row; a file that cannot be read or is refused
gets ``accepted = False`` and the reason. Rows are sorted by image path.

The ``ray`` engine sends the sorted file paths through a Ray Data ``map_batches`` stage whose
actors each load the model once; the files are read by the actors, so on a cluster every node
needs the images (shared storage) and the code with ``models/`` at the same paths. Without an
address it starts a small private Ray on this machine; with ``--address`` or ``RAY_ADDRESS`` the
same command runs on an existing cluster.

Usage:
    python -m pneumo_core batch --model cnn --data archive/ --out preds.parquet
    python -m pneumo_core batch --model cnn --data 'archive/**/*.dcm' --out preds.csv --engine ray --workers 2
    RAY_ADDRESS=head-node:6379 python -m pneumo_core batch --model cnn --data /shared/archive --out preds.parquet
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from pneumo_core.reading import DEFAULT_BATCH_SIZE, Reader, Reading, read_sources

ENGINES = ("local", "ray")
OUTPUT_SUFFIXES = (".parquet", ".csv")

# The columns of Reading.to_row, typed, so both engines write the same schema even when a column is all empty.
SCHEMA = pa.schema(
    [
        ("image", pa.string()),
        ("model", pa.string()),
        ("accepted", pa.bool_()),
        ("ood_score", pa.float64()),
        ("reason", pa.string()),
        ("probability", pa.float64()),
        ("label", pa.string()),
        ("threshold", pa.float64()),
    ]
)

# A private Ray on this machine: no dashboard, no usage report, a small object store (it only
# carries file paths and result rows, never image bytes).
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20


class BatchSettingsError(ValueError):
    """The batch command's arguments do not fit together; str(error) says how to fix them."""


class RayUnavailable(ValueError):
    """The Ray cluster named by ``--address`` or ``RAY_ADDRESS`` cannot be reached; str(error) says what to check."""


@dataclass(frozen=True)
class RaySettings:
    """How to run the ``ray`` engine.

    Attributes:
        address: A running cluster (``host:6379``, ``ray://host:10001`` or ``auto``); ``None``
            uses ``RAY_ADDRESS`` if set, else starts a private Ray on this machine.
        workers: Actors in the pool; each loads the model once.
        cpus_per_worker: CPUs each actor reserves; TensorFlow in the actor uses that many threads.
    """

    address: str | None = None
    workers: int = 1
    cpus_per_worker: int = 1


@dataclass(frozen=True)
class BatchResult:
    """What a batch run wrote."""

    out: Path
    rows: int
    refused: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        """Throughput over the whole run (Ray start-up included)."""
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def score_files(
    model_dir: Path,
    paths: list[Path],
    out: Path,
    engine: str = "local",
    batch_size: int = DEFAULT_BATCH_SIZE,
    ray_settings: RaySettings | None = None,
) -> BatchResult:
    """Score ``paths`` with the model in ``model_dir`` and write one row per path to ``out``.

    Args:
        model_dir: A trained model folder (``models/<name>``).
        paths: The files to score (see :func:`pneumo_core.sources.expand_inputs`).
        out: A ``.parquet`` or ``.csv`` file; written to a temporary name and renamed when complete.
        engine: ``"local"`` (this process) or ``"ray"`` (Ray Data actors).
        batch_size: Images decoded and predicted together.
        ray_settings: Cluster address and pool size for the ``ray`` engine.

    Returns:
        The output path, the number of rows and of refused inputs, and the wall time.

    Raises:
        BatchSettingsError: On an unknown engine or output format, an empty list of paths, or a Ray
            pool that does not fit the cluster.
        RayUnavailable: If the cluster address does not answer.
    """
    check_settings(out, engine, batch_size, paths, ray_settings)
    started = time.perf_counter()
    ordered = sorted({str(path) for path in paths})
    if engine == "ray":
        tables = ray_tables(model_dir, ordered, batch_size, ray_settings or RaySettings())
    else:
        tables = local_tables(model_dir, ordered, batch_size)
    rows, refused = write_tables(tables, out)
    return BatchResult(out=out, rows=rows, refused=refused, seconds=time.perf_counter() - started)


def choose_engine(engine: str | None, address: str | None) -> str:
    """The engine to use: the one asked for, else ``ray`` when a cluster address is given or in ``RAY_ADDRESS``."""
    if engine is not None:
        return engine
    return "ray" if address or os.environ.get("RAY_ADDRESS") else "local"


def check_settings(
    out: Path, engine: str, batch_size: int, paths: list[Path], ray_settings: RaySettings | None
) -> None:
    """Refuse arguments that cannot work, before any model or cluster is started."""
    if engine not in ENGINES:
        raise BatchSettingsError(f"Unknown engine {engine!r}; choose one of {', '.join(ENGINES)}.")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise BatchSettingsError(f"The output must end in {' or '.join(OUTPUT_SUFFIXES)}, not {out.name!r}.")
    if batch_size < 1:
        raise BatchSettingsError(f"The batch size must be at least 1, not {batch_size}.")
    if not paths:
        raise BatchSettingsError("There are no files to score.")
    if ray_settings is not None and (ray_settings.workers < 1 or ray_settings.cpus_per_worker < 1):
        raise BatchSettingsError("--workers and --cpus-per-worker must be at least 1.")
    if engine == "local" and ray_settings is not None and ray_settings != RaySettings():
        raise BatchSettingsError("--address, --workers and --cpus-per-worker need --engine ray.")


def readings_table(readings: Iterable[tuple[str, Reading]]) -> pa.Table:
    """One typed table row per ``(image, reading)``, with the columns of :meth:`Reading.to_row`."""
    return pa.Table.from_pylist([reading.to_row(name) for name, reading in readings], schema=SCHEMA)


def local_tables(model_dir: Path, ordered: list[str], batch_size: int) -> Iterator[pa.Table]:
    """The ``local`` engine: read every file in this process, one table per batch."""
    from pneumo_core.artifacts import load_model_dir

    reader = Reader(load_model_dir(model_dir))
    readings = read_sources(reader, ((name, Path(name)) for name in ordered), batch_size)
    chunk: list[tuple[str, Reading]] = []
    for item in readings:
        chunk.append(item)
        if len(chunk) == batch_size:
            yield readings_table(chunk)
            chunk = []
    if chunk:
        yield readings_table(chunk)


class ReadBatch:
    """A Ray Data actor: loads the model once, then reads batches of file paths with the shared pipeline."""

    def __init__(self, model_dir: str, threads: int) -> None:
        _limit_tensorflow_threads(threads)
        from pneumo_core.artifacts import load_model_dir

        self.reader = Reader(load_model_dir(Path(model_dir)))

    def __call__(self, batch: pa.Table) -> pa.Table:
        names = [str(name) for name in batch.column("image").to_pylist()]
        return readings_table(read_sources(self.reader, ((name, Path(name)) for name in names), len(names)))


def ray_tables(model_dir: Path, ordered: list[str], batch_size: int, settings: RaySettings) -> Iterator[pa.Table]:
    """The ``ray`` engine: a pool of :class:`ReadBatch` actors over the paths, results streamed back in order."""
    import ray.data

    with ray_session(settings.address):
        check_cluster_fits(settings)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        blocks = max(1, math.ceil(len(ordered) / batch_size))
        dataset = ray.data.from_items([{"image": name} for name in ordered], override_num_blocks=blocks)
        scored = dataset.map_batches(
            ReadBatch,
            fn_constructor_kwargs={"model_dir": str(model_dir.resolve()), "threads": settings.cpus_per_worker},
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=min(settings.workers, blocks)),
            num_cpus=settings.cpus_per_worker,
        )
        yield from scored.iter_batches(batch_size=None, batch_format="pyarrow")


def check_cluster_fits(settings: RaySettings) -> None:
    """Refuse a pool the connected cluster cannot hold (Ray Data would otherwise wait for it forever)."""
    import ray

    needed = settings.workers * settings.cpus_per_worker
    available = ray.cluster_resources().get("CPU", 0)
    if needed > available:
        raise BatchSettingsError(
            f"{settings.workers} workers x {settings.cpus_per_worker} CPUs need {needed} CPUs; "
            f"the Ray cluster has {available:g}. Lower --workers or --cpus-per-worker, or add nodes."
        )


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Connect to Ray for the duration of the block, unless this process is already connected.

    ``address`` (or ``RAY_ADDRESS``) connects to a running cluster; without either a private Ray
    is started on this machine with all its CPUs, no dashboard and a small object store, and is
    stopped afterwards. Usage statistics are never sent, worker output is not forwarded to this
    terminal, and Ray Data only reports warnings (plus its progress bar on a terminal).
    """
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    common = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}},
    }
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, **common)
        except ConnectionError as error:
            raise RayUnavailable(
                f"Could not connect to the Ray cluster at {address}. Check that it runs (`ray status` on its head "
                "node) and, if it uses token authentication, that RAY_AUTH_MODE=token and its token are set here."
            ) from error
    else:
        ray.init(num_cpus=os.cpu_count(), object_store_memory=LOCAL_OBJECT_STORE_BYTES, **common)
    # Ray Data logs its progress at INFO on non-terminals (and re-applies its own level to "ray.data").
    logging.getLogger("ray.data._internal").setLevel(logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at a ``host:port`` cluster address (Ray itself retries for minutes).

    Raises:
        RayUnavailable: If a TCP connection to the address is refused or times out.
    """
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise RayUnavailable(
            f"Nothing answers at {address} ({error.strerror or type(error).__name__}). Start the cluster with "
            "`ray start --head` or fix --address / RAY_ADDRESS."
        ) from error


def write_tables(tables: Iterable[pa.Table], out: Path) -> tuple[int, int]:
    """Stream tables into one Parquet or CSV file (temporary name, renamed when complete).

    Returns:
        The number of rows and of refused inputs written.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    rows = refused = 0
    try:
        with _table_writer(partial, out.suffix.lower()) as writer:
            for table in tables:
                table = table.cast(SCHEMA)
                writer.write_table(table)
                rows += table.num_rows
                refused += table.num_rows - sum(table.column("accepted").to_pylist())
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return rows, refused


def _table_writer(path: Path, suffix: str):
    if suffix == ".csv":
        return pa_csv.CSVWriter(path, SCHEMA)
    return pq.ParquetWriter(path, SCHEMA)


def _limit_tensorflow_threads(threads: int) -> None:
    """Let TensorFlow in a Ray actor use as many threads as the actor reserved CPUs (before its first op)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
