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

DEFAULT_BATCH = 64
DEFAULT_WORKERS = max(1, cpu_cores() // 2)


@dataclass
class Prediction:
    """One image's answer. ``malignant_probability`` is how much the image resembles the malignant
    lesions of the training data (calibrated on validation), not a diagnosis. It and ``label`` are
    None when the quality gate refused the image; ``quality['issues']`` then says why."""

    malignant_probability: float | None
    label: str | None
    threshold: float
    diagnosis: dict[str, float] | None
    quality: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "malignant_probability": self.malignant_probability,
            "label": self.label,
            "threshold": self.threshold,
            "diagnosis": self.diagnosis,
            "quality": self.quality,
            "model": self.model,
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
    info = {"name": model.name, "version": model.version, "architecture": model.architecture}
    out = []
    for i in range(len(inputs)):
        q = quality[i] if quality is not None else {"accepted": True, "issues": [], "checked": False}
        accepted = q["accepted"]
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
