"""Inference engines: given a batch of model inputs (N, S, S, 3) uint8, return (logits, features).

``features`` is the penultimate vector the out-of-distribution score uses. The Keras engine needs
TensorFlow (seconds to import, ~40 ms of per-call overhead); the ONNX Runtime engine runs the
folder's ``model.onnx`` (written by ``skinmole.onnx_export``, same outputs within 1e-4) in about a
millisecond per image without importing TensorFlow. ``make_engine`` picks ONNX where it can.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

ENGINES = ("auto", "keras", "onnx")
# Idle ONNX Runtime threads sleep instead of busy-waiting: on a shared machine (this one trains
# models beside serving) spinning threads steal the cores the other threads need.
DEFAULT_SPINNING = False
OUTPUT_NAMES = ["logits", "features"]
# Images per ONNX Runtime call: the activations of the first stages dominate memory (~7 MB per image
# at 128 px, held by the arena), and throughput is flat from 16 images up.
MAX_BATCH = 32


def cpu_cores() -> int:
    """The cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def with_features(keras_model):
    """The Keras model with its ``features`` layer as a second output: (logits, features)."""
    import keras

    return keras.Model(keras_model.inputs, [keras_model.outputs[0], keras_model.get_layer("features").output])


class KerasEngine:
    """Runs the saved Keras model, with the ``features`` layer exposed as a second output."""

    name = "keras"

    def __init__(self, model):
        self._model = with_features(model.keras_model)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self._model.predict_on_batch(np.asarray(batch, dtype=np.float32))
        return np.asarray(logits, dtype=np.float32), np.asarray(features, dtype=np.float32)


class OnnxEngine:
    """Runs ``model.onnx`` with ONNX Runtime: one intra-op thread per core, sequential execution,
    all graph optimisations. Input ``pixels`` uint8 (N, S, S, 3); outputs ``logits``, ``features``.

    ``threads`` (env ``SKINMOLE_ONNX_THREADS``) and ``spinning`` (env ``SKINMOLE_ONNX_SPINNING``,
    0/1: whether idle worker threads busy-wait; fastest on an idle machine, slowest on a shared one)
    override the defaults."""

    name = "onnx"

    def __init__(self, path, threads: int | None = None, spinning: bool | None = None):
        import onnxruntime as ort

        if threads is None:
            threads = int(os.environ.get("SKINMOLE_ONNX_THREADS") or cpu_cores())
        if spinning is None:
            spinning = os.environ.get("SKINMOLE_ONNX_SPINNING", "1" if DEFAULT_SPINNING else "0") != "0"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.path = str(path)
        self.threads, self.spinning = max(1, threads), spinning
        self.max_batch = MAX_BATCH
        self._session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        inputs = self._session.get_inputs()
        outputs = {o.name for o in self._session.get_outputs()}
        if len(inputs) != 1 or not {"logits", "features"} <= outputs:
            from .model import ModelLoadError

            raise ModelLoadError(f"{path}: not a skinmole ONNX model (needs one input and outputs logits, features)")
        self._input = inputs[0].name
        self._dtype = np.uint8 if inputs[0].type == "tensor(uint8)" else np.float32

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=self._dtype)
        if len(batch) <= self.max_batch:
            logits, features = self._session.run(OUTPUT_NAMES, {self._input: batch})
            return logits, features
        parts = [self._session.run(OUTPUT_NAMES, {self._input: batch[i:i + self.max_batch]})
                 for i in range(0, len(batch), self.max_batch)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def run_in_batches(engine, pixels: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(logits, features) of many model inputs, ``batch_size`` at a time (bounded memory)."""
    parts = [engine.run(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def onnx_available() -> bool:
    """Whether onnxruntime is installed (found without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def make_engine(model, choice: str = "auto"):
    """The engine for ``model``: ``"onnx"``, ``"keras"``, or ``"auto"`` (ONNX Runtime when it is
    installed and the folder has an ONNX file, else Keras)."""
    from .model import ModelLoadError

    if choice not in ENGINES:
        raise ValueError(f"engine must be 'auto', 'keras' or 'onnx', not {choice!r}")
    if choice == "keras":
        return KerasEngine(model)
    onnx_file = model.config.get("onnx_file")
    if choice == "onnx":
        if not onnx_file:
            raise ModelLoadError(
                f"{model.folder}: engine='onnx' but the model folder has no ONNX file; "
                f"add one with: python scripts/export_onnx.py --model {model.folder}"
            )
        if not onnx_available():
            raise ModelLoadError("engine='onnx' needs onnxruntime: pip install onnxruntime")
        return OnnxEngine(model.folder / onnx_file)
    if onnx_file and onnx_available():
        try:
            return OnnxEngine(model.folder / onnx_file)
        except ImportError:  # a broken onnxruntime install: the Keras engine gives the same answers
            pass
    return KerasEngine(model)
