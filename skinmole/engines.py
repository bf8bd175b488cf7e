"""Inference engines: given a batch of model inputs (N, S, S, 3) uint8, return (logits, features).

``features`` is the penultimate vector the out-of-distribution score uses. The Keras engine needs
TensorFlow; a faster engine that does not may be chosen by ``make_engine``.
"""

from __future__ import annotations

import numpy as np


class KerasEngine:
    """Runs the saved Keras model, with the ``features`` layer exposed as a second output."""

    name = "keras"

    def __init__(self, model):
        import keras

        km = model.keras_model
        self._model = keras.Model(km.inputs, [km.output, km.get_layer("features").output])

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self._model.predict_on_batch(np.asarray(batch, dtype=np.float32))
        return np.asarray(logits, dtype=np.float32), np.asarray(features, dtype=np.float32)


def make_engine(model, choice: str = "auto"):
    if choice not in ("auto", "keras", "onnx"):
        raise ValueError(f"engine must be 'auto', 'keras' or 'onnx', not {choice!r}")
    return KerasEngine(model)
