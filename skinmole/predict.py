"""Prediction: decode, batch, run the engine, calibrate, threshold, and gate on quality.

``predict`` answers one image or a list (in input order, in batched engine calls). ``iter_predict``
streams any number of inputs in chunks and yields an error instead of raising, for the CLI.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .engines import cpu_cores
from .images import InvalidImageError, describe, load_model_input
from .model import SkinmoleModel, load_model
from .quality import QualityReport
from .records import Record

DEFAULT_BATCH = 64
DEFAULT_WORKERS = max(1, cpu_cores() // 2)


# The table columns that ``Prediction.summary`` fills, after the input's name.
SUMMARY_HEADER = f"{'label':<9}  {'p(malignant)':>12}  {'threshold':>9}  top diagnosis"


@dataclass(frozen=True, eq=False)
class ModelInfo(Record):
    """Which model answered; None where unknown (a ``Prediction`` built by hand). Reads as a dict."""

    name: str | None = None
    version: str | None = None
    architecture: str | None = None


@dataclass
class Prediction:
    """One image's answer. ``malignant_probability`` is how much the image resembles the malignant
    lesions of the training data (calibrated on validation), not a diagnosis. It and ``label`` are
    None when the quality gate refused the image; ``quality.issues`` then says why.

    ``quality`` has the same keys whether or not the gate ran: with ``check_quality=False`` it is
    ``checked`` False, accepted, and its measurements None (see ``QualityReport``). Dicts given for
    ``quality`` or ``model`` become a ``QualityReport`` / ``ModelInfo``."""

    malignant_probability: float | None
    label: str | None
    threshold: float
    diagnosis: dict[str, float] | None
    quality: QualityReport = field(default_factory=QualityReport)
    model: ModelInfo = field(default_factory=ModelInfo)

    def __post_init__(self):
        if not isinstance(self.quality, QualityReport):
            self.quality = QualityReport.from_dict(self.quality)
        if not isinstance(self.model, ModelInfo):
            self.model = ModelInfo.from_dict(self.model)

    @property
    def accepted(self) -> bool:
        """Whether the image was judged (the gate passed it, or did not run)."""
        return bool(self.quality.accepted)

    @property
    def top_diagnosis(self) -> str | None:
        """The class with the highest probability (the first of a tie), or None without a differential.
        The label follows P(malignant) at the threshold, not this."""
        return max(self.diagnosis, key=self.diagnosis.get) if self.diagnosis else None

    def summary(self) -> str:
        """One line in the columns of ``SUMMARY_HEADER``: label, P(malignant), threshold and the top
        diagnosis, or 'refused' and the gate's issues."""
        threshold = f"{self.threshold:>9.3f}"
        if self.malignant_probability is None:
            issues = "; ".join(str(i) for i in self.quality.issues) or "refused by the quality gate"
            return f"{'refused':<9}  {'-':>12}  {threshold}  {issues}"
        top = self.top_diagnosis
        top = f"{top} {self.diagnosis[top]:.2f}" if top is not None else ""
        return f"{self.label:<9}  {self.malignant_probability:>12.3f}  {threshold}  {top}"

    def to_dict(self) -> dict:
        """The JSON contract (the CLI's ``--json`` line without ``input``)."""
        return {
            "malignant_probability": self.malignant_probability,
            "label": self.label,
            "threshold": self.threshold,
            "diagnosis": self.diagnosis,
            "quality": self.quality.to_dict(),
            "model": self.model.to_dict(),
        }


def _is_batch(images) -> bool:
    return isinstance(images, (list, tuple))


# Work that runs beside the engine. Two threads: predict may be called from two threads at once, as
# the demo does. A ThreadPoolExecutor starts its threads at the first submit, not here.
_SIDE_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="skinmole-gate")


def _predict_decoded(inputs: list[np.ndarray], sizes: list[tuple[int, int]], model: SkinmoleModel,
                     check_quality: bool) -> list[Prediction]:
    """Predictions for model inputs, given each original image's (width, height) for the gate."""
    batch = np.stack(inputs)
    gate = model.quality_gate if check_quality else None
    # The gate's pixel statistics need only the pixels: computed in a side thread while the engine
    # runs (numpy and ONNX Runtime release the GIL; measured a few per cent faster than after it).
    stats = _SIDE_POOL.submit(gate.pixel_stats, batch) if gate is not None else None
    logits, features = model.engine.run(batch)
    answers = model.head.answer(logits)
    quality = gate.assess(sizes, batch, features, stats.result()) if gate is not None else None
    info = ModelInfo(name=model.name, version=model.version, architecture=model.architecture)
    out = []
    for i in range(len(inputs)):
        q = quality[i] if quality is not None else QualityReport()
        accepted = q.accepted
        out.append(Prediction(
            malignant_probability=float(answers.p_malignant[i]) if accepted else None,
            label=answers.labels[i] if accepted else None,
            threshold=model.threshold,
            diagnosis=answers.differential(i) if accepted else None,
            quality=q,
            model=info,
        ))
    return out


def predict(images, model=None, *, check_quality: bool = True, batch_size: int = DEFAULT_BATCH,
            workers: int | None = None):
    """Predict one image (path, bytes, binary file, PIL image or array) or a list of them.

    Returns a ``Prediction`` or a list in input order. Raises ``InvalidImageError`` (naming the input)
    for anything that is not a readable image. ``model``: a loaded model or any ``load_model`` source;
    None uses the bundled default. ``check_quality=False`` turns the quality gate off. A list is
    decoded in background threads while the model runs (``workers``, as in ``iter_predict``).
    """
    m = load_model(model)
    if not _is_batch(images):
        model_input, size = load_model_input(images, m.input_size)
        return _predict_decoded([model_input], [size], m, check_quality)[0]
    out: list[Prediction] = []
    for _, result in iter_predict(images, m, check_quality=check_quality, batch_size=batch_size, workers=workers):
        if isinstance(result, InvalidImageError):
            raise result
        out.append(result)
    return out


def _decode_chunk(chunk: list, size: int) -> list:
    """Decode and resize one chunk: ``(model input, (width, height))`` or the ``InvalidImageError``
    per source."""
    decoded = []
    for src in chunk:
        try:
            decoded.append(load_model_input(src, size, str(src) if isinstance(src, (str, Path)) else describe(src)))
        except InvalidImageError as exc:
            decoded.append(exc)
    return decoded


def _chunks(sources: Iterable, size: int) -> Iterator[list]:
    it = iter(sources)
    while chunk := list(islice(it, size)):
        yield chunk


def _decoded_chunks(sources: Iterable, size: int, batch_size: int, workers: int) -> Iterator[tuple[list, list]]:
    """``(chunk, decoded)`` in order; with ``workers`` threads, up to ``workers + 1`` chunks are decoded
    ahead of the one being predicted (PIL releases the GIL), so memory stays bounded. A single chunk
    is decoded inline: there is nothing to overlap it with."""
    rest = _chunks(sources, batch_size)
    chunks = chain(head := list(islice(rest, 2)), rest)
    if workers <= 0 or len(head) < 2:
        for chunk in chunks:
            yield chunk, _decode_chunk(chunk, size)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="skinmole-decode")
    pending: deque = deque()
    try:
        for chunk in chunks:
            pending.append((chunk, pool.submit(_decode_chunk, chunk, size)))
            if len(pending) > workers:
                chunk0, fut = pending.popleft()
                yield chunk0, fut.result()
        while pending:
            chunk0, fut = pending.popleft()
            yield chunk0, fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def iter_predict(sources: Iterable, model=None, *, check_quality: bool = True, batch_size: int = DEFAULT_BATCH,
                 workers: int | None = None) -> Iterator[tuple[object, Prediction | InvalidImageError]]:
    """Yield ``(source, Prediction or InvalidImageError)`` in input order, holding a few chunks at a time.

    Decoding and resizing run in ``workers`` background threads (default: 1 per 2 cores, at least 1;
    0 decodes inline) while the engine runs the previous chunk; preprocessing gives exactly the pixels
    of ``load_image`` then ``to_model_input``, as in training.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    m = load_model(model)
    if workers is None:
        workers = DEFAULT_WORKERS
    for chunk, decoded in _decoded_chunks(sources, m.input_size, batch_size, workers):
        good = [i for i, d in enumerate(decoded) if not isinstance(d, InvalidImageError)]
        preds = _predict_decoded([decoded[i][0] for i in good], [decoded[i][1] for i in good], m,
                                 check_quality) if good else []
        by_index = dict(zip(good, preds))
        for i, src in enumerate(chunk):
            yield src, by_index.get(i, decoded[i])
