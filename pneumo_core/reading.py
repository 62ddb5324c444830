"""From bytes to a reading: the one pipeline that the app, the CLI, evaluation, the benchmark and batch share.

``imaging.read_xray`` turns bytes of any supported format into an :class:`~pneumo_core.imaging.XRay`
(the contract's grayscale plus conversion notes); a :class:`Reader` turns X-rays into
:class:`Reading` objects (probability, label at the operating threshold, and whether the input was
accepted) and computes heatmaps on demand. Callers only display or store what comes out.

Usage:
    reader = Reader(load_model_dir(Path("models/cnn")))
    reading = reader.read(read_xray(data, "upload.png"))
    heat = reader.heatmap(xray, "Grad-CAM", reading.target_class)
    for name, reading in read_sources(reader, [("a.png", path_a), ("b.dcm", bytes_b)]):
        print(name, reading.to_row(name))
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumo_core.artifacts import LoadedModel
from pneumo_core.gate import Verdict, load_gate
from pneumo_core.imaging import ImageRejected, XRay, place_in_frame, read_xray, read_xray_file
from pneumo_core.subtype import SubtypeReading, load_subtype

DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class Reading:
    """One model's reading of one input.

    An unreadable or refused input has ``accepted=False``, a ``reason`` and no probability or label.
    """

    model: str
    threshold: float
    probability: float | None = None
    label: str | None = None
    accepted: bool = True
    reason: str | None = None
    ood_score: float | None = None
    caution: bool = False  # accepted, but close to the gate's refusal limit: an unusual image
    subtype: SubtypeReading | None = None  # bacterial or viral: accepted pneumonia readings of a model with a head

    @property
    def target_class(self) -> int:
        """Index of the predicted class (1 = PNEUMONIA); only meaningful for an accepted reading."""
        return int(self.probability is not None and self.probability >= self.threshold)

    def to_row(self, image: str) -> dict:
        """A flat JSON/CSV-friendly row: image, accepted, ood_score, reason, probability, label, threshold."""
        return {
            "image": image,
            "model": self.model,
            "accepted": self.accepted,
            "ood_score": None if self.ood_score is None else round(self.ood_score, 4),
            "reason": self.reason,
            "probability": None if self.probability is None else round(self.probability, 6),
            "label": self.label,
            "threshold": round(self.threshold, 6),
        }

    def subtype_fields(self, flat: bool = False) -> dict:
        """``subtype`` (``"bacteria"``, ``"virus"``, ``"uncertain"`` or None) and its calibrated probabilities.

        Both are None unless the reading is an accepted PNEUMONIA of a model with a subtype head. The
        probabilities are given pneumonia: ``{"bacteria": q, "virus": 1 - q}`` under ``subtype_probabilities``,
        or, with ``flat`` (CSV), as ``subtype_probability_bacteria`` and ``subtype_probability_virus``.
        """
        probabilities = None if self.subtype is None else self.subtype.probabilities()
        if flat:
            return {
                "subtype": None if self.subtype is None else self.subtype.call,
                **{f"subtype_probability_{name}": (probabilities or {}).get(name) for name in ("bacteria", "virus")},
            }
        return {"subtype": None if self.subtype is None else self.subtype.call, "subtype_probabilities": probabilities}


class Reader:
    """Reads X-rays with one loaded model. Read-only after construction: share it across sessions and threads."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.gate = load_gate(loaded)  # None for a model directory without gate files
        gate_layer = None if self.gate is None else self.gate.settings.feature_layer
        self.subtype = load_subtype(loaded, gate_layer)  # None for a model directory without a subtype head
        self._explainer = None
        self._explainer_lock = threading.Lock()

    @property
    def name(self) -> str:
        """The model's registry name."""
        return self.loaded.spec.name

    def refused(self, reason: str) -> Reading:
        """A reading for an input that could not be read or was refused."""
        return Reading(model=self.name, threshold=self.loaded.threshold, accepted=False, reason=reason)

    def read(self, xray: XRay, reveal_refused: bool = False) -> Reading:
        """Read one X-ray (see :meth:`read_many`)."""
        return self.read_many([xray], reveal_refused)[0]

    def read_many(self, xrays: Sequence[XRay], reveal_refused: bool = False) -> list[Reading]:
        """Read several X-rays in one batched forward pass, through the model's gate when it has one.

        An image the gate refuses gets ``accepted=False``, the reason and its ``ood_score``, and no
        probability or label unless ``reveal_refused`` ("show the model's reading anyway").
        """
        if not xrays:
            return []
        squares = np.stack([self.loaded.square(xray.gray) for xray in xrays])
        if self.subtype is not None:
            return self._read_with_subtype(xrays, squares, reveal_refused)
        if self.gate is None:
            return [self._accepted(float(probability)) for probability in self.loaded.predict_squares(squares)]
        probabilities, features = self.gate.forward(squares)
        verdicts = self.gate.judge([xray.gray for xray in xrays], features)
        return [
            self._gated(float(probability), verdict, reveal_refused)
            for probability, verdict in zip(probabilities, verdicts, strict=True)
        ]

    def _read_with_subtype(self, xrays: Sequence[XRay], squares: np.ndarray, reveal_refused: bool) -> list[Reading]:
        """:meth:`read_many` for a model with a subtype head: p, q and the gate's features from one pass."""
        probabilities, bacteria, features = self.subtype.forward(squares)
        if self.gate is None:
            readings = [self._accepted(float(probability)) for probability in probabilities]
        else:
            verdicts = self.gate.judge([xray.gray for xray in xrays], features)
            readings = [
                self._gated(float(probability), verdict, reveal_refused)
                for probability, verdict in zip(probabilities, verdicts, strict=True)
            ]
        return [self._with_subtype(reading, float(q)) for reading, q in zip(readings, bacteria, strict=True)]

    def _with_subtype(self, reading: Reading, bacteria: float) -> Reading:
        """The reading with its subtype when it is an accepted PNEUMONIA; others are left without one."""
        if not reading.accepted or reading.probability is None or reading.target_class != 1:
            return reading
        return dataclasses.replace(reading, subtype=self.subtype.reading(bacteria))

    def _gated(self, probability: float, verdict: Verdict, reveal_refused: bool) -> Reading:
        shown = verdict.accepted or reveal_refused
        return Reading(
            model=self.name,
            threshold=self.loaded.threshold,
            probability=probability if shown else None,
            label=self.loaded.label(probability) if shown else None,
            accepted=verdict.accepted,
            reason=verdict.reason,
            ood_score=verdict.ood_score,
            caution=verdict.caution,
        )

    def _accepted(self, probability: float) -> Reading:
        return Reading(
            model=self.name,
            threshold=self.loaded.threshold,
            probability=probability,
            label=self.loaded.label(probability),
        )

    def heatmap(self, xray: XRay, method: str, target_class: int | str) -> np.ndarray:
        """A map in [0, 1] of the evidence for ``target_class`` (see :mod:`pneumo_core.gradcam`):
        1 PNEUMONIA, 0 NORMAL, or ``"bacteria"`` / ``"virus"`` for a model with a subtype head.

        It covers the image's frame: the square map of a squashing model, or, for a model that trims
        uniform borders, the map laid over the content box (zero on the borders it did not read)."""
        square_map = self.explainer.heatmap(self.loaded.square(xray.gray), method, target_class)
        return place_in_frame(square_map, xray.gray, self.loaded.framing)

    @property
    def explainer(self):
        """The heatmap methods of this model, built on first use."""
        with self._explainer_lock:
            if self._explainer is None:
                from pneumo_core.gradcam import Explainer

                self._explainer = Explainer(self.loaded, self.subtype)
            return self._explainer


Source = tuple[str, "bytes | Path"]


def read_sources(
    reader: Reader, sources: Iterable[Source], batch_size: int = DEFAULT_BATCH_SIZE, reveal_refused: bool = False
) -> Iterator[tuple[str, Reading]]:
    """Stream readings for many inputs, decoding at most ``batch_size`` images at a time.

    Args:
        reader: The model to read with.
        sources: ``(name, bytes or path)`` pairs; paths are read with the bounded file reader.
        batch_size: How many decoded images are held in memory at once.
        reveal_refused: Give images the gate refused their probability and label too (see :meth:`Reader.read_many`).

    Yields:
        ``(name, reading)`` in input order, one per source; an unreadable input yields a refused
        reading with the reason, never an exception.
    """
    pending: list[tuple[str, XRay | str]] = []
    for name, source in sources:
        pending.append((name, _decode(name, source)))
        if len(pending) >= batch_size:
            yield from _read_pending(reader, pending, reveal_refused)
            pending = []
    yield from _read_pending(reader, pending, reveal_refused)


def _decode(name: str, source: bytes | Path) -> XRay | str:
    """The decoded X-ray, or the reason it cannot be read."""
    try:
        return read_xray_file(source) if isinstance(source, Path) else read_xray(source, name)
    except ImageRejected as error:
        return str(error)
    except OSError as error:
        return f"The file could not be read ({error.strerror or type(error).__name__})."


def _read_pending(
    reader: Reader, pending: list[tuple[str, XRay | str]], reveal_refused: bool = False
) -> Iterator[tuple[str, Reading]]:
    xrays = [item for _, item in pending if isinstance(item, XRay)]
    readings = iter(reader.read_many(xrays, reveal_refused))
    for name, item in pending:
        yield name, next(readings) if isinstance(item, XRay) else reader.refused(item)
