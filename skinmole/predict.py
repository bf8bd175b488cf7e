"""Prediction: decode, batch, run the engine, calibrate, threshold, and gate on quality.

``predict`` answers one image or a list (in input order, in batched engine calls). ``iter_predict``
streams any number of inputs in chunks and yields an error instead of raising, for the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .calibration import malignant_probability, probabilities
from .images import InvalidImageError, describe, load_image, to_model_input
from .model import SkinmoleModel, default_model, load_model

DEFAULT_BATCH = 64


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


def _resolve(model) -> SkinmoleModel:
    return default_model() if model is None else load_model(model)


def _predict_decoded(rgbs: list[np.ndarray], model: SkinmoleModel, check_quality: bool) -> list[Prediction]:
    batch = np.stack([to_model_input(rgb, model.input_size) for rgb in rgbs])
    logits, features = model.engine.run(batch)
    probs = probabilities(logits, model.temperature)
    p_mal = malignant_probability(probs, model.class_names, model.malignant_classes)
    gate = model.quality_gate if check_quality else None
    quality = gate.assess(rgbs, batch, features) if gate is not None else None
    info = {"name": model.config.get("name", ""), "version": model.version, "architecture": model.config["architecture"]}
    out = []
    for i in range(len(rgbs)):
        q = quality[i] if quality is not None else {"accepted": True, "issues": [], "checked": False}
        accepted = q["accepted"]
        p = float(p_mal[i])
        diagnosis = None
        if probs.shape[-1] > 1:
            diagnosis = {c: float(probs[i, j]) for j, c in enumerate(model.class_names)}
        out.append(Prediction(
            malignant_probability=p if accepted else None,
            label=("malignant" if p >= model.threshold else "benign") if accepted else None,
            threshold=model.threshold,
            diagnosis=diagnosis if accepted else None,
            quality=q,
            model=info,
        ))
    return out


def predict(images, model=None, *, check_quality: bool = True, batch_size: int = DEFAULT_BATCH):
    """Predict one image (path, bytes, binary file, PIL image or array) or a list of them.

    Returns a ``Prediction`` or a list in input order. Raises ``InvalidImageError`` (naming the input)
    for anything that is not a readable image. ``model``: a loaded model or any ``load_model`` source;
    None uses the bundled default. ``check_quality=False`` turns the quality gate off.
    """
    m = _resolve(model)
    if not _is_batch(images):
        return _predict_decoded([load_image(images)], m, check_quality)[0]
    rgbs = [load_image(img) for img in images]
    out: list[Prediction] = []
    for start in range(0, len(rgbs), batch_size):
        out += _predict_decoded(rgbs[start:start + batch_size], m, check_quality)
    return out


def iter_predict(sources: Iterable, model=None, *, check_quality: bool = True,
                 batch_size: int = DEFAULT_BATCH) -> Iterator[tuple[object, Prediction | InvalidImageError]]:
    """Yield ``(source, Prediction or InvalidImageError)`` in input order, holding one chunk at a time."""
    m = _resolve(model)
    chunk: list = []

    def flush():
        good = [(i, rgb) for i, (_, rgb) in enumerate(chunk) if not isinstance(rgb, InvalidImageError)]
        preds = _predict_decoded([rgb for _, rgb in good], m, check_quality) if good else []
        by_index = {i: p for (i, _), p in zip(good, preds)}
        for i, (src, rgb) in enumerate(chunk):
            yield src, by_index.get(i, rgb)

    for src in sources:
        try:
            rgb = load_image(src, str(src) if isinstance(src, (str, Path)) else describe(src))
        except InvalidImageError as exc:
            rgb = exc
        chunk.append((src, rgb))
        if len(chunk) >= batch_size:
            yield from flush()
            chunk = []
    if chunk:
        yield from flush()
