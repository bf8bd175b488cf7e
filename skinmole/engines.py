"""Inference engines: given a batch of model inputs (N, S, S, 3) uint8, return (logits, features).

``features`` is the penultimate vector the out-of-distribution score uses. The Keras engine needs
TensorFlow (seconds to import, ~40 ms of per-call overhead); the ONNX Runtime engine runs the
folder's ``model.onnx`` (written by ``skinmole.onnx_export``, same outputs within 1e-4) in about a
millisecond per image without importing TensorFlow. ``make_engine`` uses ONNX for every folder that
has an ONNX file; when onnxruntime is missing it says so instead of quietly loading TensorFlow.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import ModelLoadError

ENGINES = ("auto", "keras", "onnx", "onnx-int8")  # onnx-int8: opt-in, never what "auto" picks
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

    def __init__(self, keras_model):
        self._model = with_features(keras_model)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self._model.predict_on_batch(np.asarray(batch, dtype=np.float32))
        return np.asarray(logits, dtype=np.float32), np.asarray(features, dtype=np.float32)


def import_onnxruntime():
    """``onnxruntime``, or a ``ModelLoadError`` that says how to get it. Only an import failure is
    turned into that error: an interrupt (Ctrl-C) while it imports stays an interrupt."""
    try:
        import onnxruntime
    except ModuleNotFoundError as exc:
        if exc.name != "onnxruntime":
            raise _interrupt_or(exc, f"onnxruntime is installed but cannot be imported ({exc})") from exc
        raise ModelLoadError("the ONNX engine needs onnxruntime: pip install onnxruntime "
                             "(or load the model with engine='keras', which needs TensorFlow)") from exc
    except ImportError as exc:
        raise _interrupt_or(exc, f"onnxruntime is installed but cannot be imported ({exc}); "
                                 "reinstall it: pip install --force-reinstall onnxruntime") from exc
    return onnxruntime


def _interrupt_or(exc: BaseException, message: str) -> BaseException:
    """A KeyboardInterrupt that an extension module's import wrapped in an ImportError, else the error."""
    seen = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return KeyboardInterrupt()
        seen = seen.__cause__ or seen.__context__
    return ModelLoadError(message)


class OnnxEngine:
    """Runs a skinmole ONNX model with ONNX Runtime: one intra-op thread per core, sequential
    execution, all graph optimisations. Input ``pixels`` uint8 (N, S, S, 3); outputs ``logits``, ``features``.

    ``model``: the ONNX file's bytes (the bytes whose sha256 was checked) or a path. ``threads``
    (env ``SKINMOLE_ONNX_THREADS``) and ``spinning`` (env ``SKINMOLE_ONNX_SPINNING``, 0/1: whether
    idle worker threads busy-wait; fastest on an idle machine, slowest on a shared one) override the
    defaults."""

    name = "onnx"

    def __init__(self, model, threads: int | None = None, spinning: bool | None = None, *, name: str = "model.onnx"):
        ort = import_onnxruntime()
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
        self.path = name if isinstance(model, (bytes, bytearray)) else str(model)
        self.threads, self.spinning = max(1, threads), spinning
        self.max_batch = MAX_BATCH
        source = bytes(model) if isinstance(model, (bytes, bytearray)) else str(model)
        try:
            self._session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for unreadable models
            raise ModelLoadError(f"{self.path}: ONNX Runtime cannot load it ({type(exc).__name__}: {exc})") from exc
        inputs = self._session.get_inputs()
        self.outputs = {o.name: list(o.shape) for o in self._session.get_outputs()}
        if len(inputs) != 1 or not {"logits", "features"} <= set(self.outputs):
            raise ModelLoadError(f"{self.path}: not a skinmole ONNX model (needs one input and outputs logits, features)")
        self._input = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self._dtype = np.uint8 if inputs[0].type == "tensor(uint8)" else np.float32

    def check(self, input_size: int, n_logits: int, feature_dim: int | None) -> None:
        """Refuse an ONNX model whose input size or output widths differ from the config's."""
        shape = self.input_shape
        if len(shape) != 4 or shape[1:] != [input_size, input_size, 3]:
            raise ModelLoadError(f"{self.path}: input_size: the ONNX model takes {shape[1:]}, "
                                 f"the config says {input_size}")
        if self.outputs["logits"][-1] != n_logits:
            raise ModelLoadError(f"{self.path}: class_names: the ONNX model answers {self.outputs['logits'][-1]} "
                                 f"logits, the config's head needs {n_logits}")
        if feature_dim is not None and self.outputs["features"][-1] != feature_dim:
            raise ModelLoadError(f"{self.path}: quality: feature_dim is {feature_dim}, the ONNX model's "
                                 f"features have {self.outputs['features'][-1]}")

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


def make_engine(folder, choice: str = "auto", keras_model=None):
    """The engine for an opened ``ModelFolder``: ``"onnx"``, ``"keras"``, ``"onnx-int8"`` (opt-in), or
    ``"auto"``: ONNX Runtime when the folder has an ONNX file (a missing onnxruntime is then an error
    that says so, never a silent switch to TensorFlow), Keras only for a folder without one; never
    int8. ``keras_model``: already loaded."""
    if choice not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {choice!r}")
    config = folder.config
    if choice == "onnx-int8":
        return _int8_engine(folder)
    if choice == "keras" or (choice == "auto" and not config.onnx_file):
        return KerasEngine(keras_model if keras_model is not None else folder.keras_model())
    if not config.onnx_file:
        raise ModelLoadError(
            f"{folder.path}: engine='onnx' but the model folder has no ONNX file; "
            f"add one with: skinmole export-onnx --model {folder.path}"
        )
    return _checked_onnx_engine(folder, config.onnx_file, OnnxEngine)


class Int8OnnxEngine(OnnxEngine):
    """The folder's int8 ONNX model (``skinmole quantise``): the same inputs and outputs as the float
    one; its answers differ from the float engine's by what the config's ``int8`` entry records."""

    name = "onnx-int8"


def _int8_engine(folder) -> OnnxEngine:
    config = folder.config
    if not config.int8:
        raise ModelLoadError(f"{folder.path}: engine='onnx-int8' but the model folder has no int8 model; "
                             f"build one with: skinmole quantise {folder.path}")
    return _checked_onnx_engine(folder, config.int8.file, Int8OnnxEngine)


def _checked_onnx_engine(folder, file: str, kind: type[OnnxEngine]) -> OnnxEngine:
    """``kind`` over ``file``'s checked bytes, its shapes checked against the folder's config."""
    config = folder.config
    import_onnxruntime()  # before reading 13 MB: a missing onnxruntime is said first
    engine = kind(folder.read_verified(file), name=f"{folder.path}/{file}")
    engine.check(config.input_size, config.n_logits, config.quality.feature_dim if config.quality else None)
    return engine
