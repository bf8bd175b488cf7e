"""``load_model``: the one door to a model (the bundled default, a local folder, or a Hub repo id).

It opens the folder (``ModelFolder``: the config validated, every file's sha256 checked), builds the
engine and the quality gate from the checked bytes, and returns a ``SkinmoleModel``: those three
plus the ``Head`` that turns logits into an answer. Everything is checked here, at load, so a bad
folder fails with a ``ModelLoadError`` naming the file or field, never at the first prediction.
The bundled default is loaded once per process. TensorFlow is imported only for the Keras engine
or ``keras_model`` (Grad-CAM).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .config import ModelConfig
from .download import download_model, looks_like_repo_id
from .errors import ModelLoadError
from .head import Head
from .model_folder import ModelFolder, sha256_file

BUNDLED_MODEL = Path(__file__).resolve().parent / "weights" / "default"

__all__ = ["BUNDLED_MODEL", "ModelLoadError", "SkinmoleModel", "load_model", "read_config", "save_model_folder",
           "sha256_file"]


class SkinmoleModel:
    """A loaded model: the folder it came from, its engine, its gate and its head. Made by ``load_model``.

    ``spec`` is the typed, validated ``ModelConfig``; ``config`` the same as a plain dict (what
    ``skinmole.json`` says), for readers that want a key by name."""

    def __init__(self, model_folder: ModelFolder, engine, gate, keras_model=None):
        self.model_folder = model_folder
        self.spec: ModelConfig = model_folder.config
        self.head = Head.from_config(self.spec)
        self.engine = engine
        self.quality_gate = gate
        self._keras_model = keras_model

    def __repr__(self) -> str:
        s = self.spec
        return (f"SkinmoleModel({s.architecture}, {s.input_size}px, classes={list(s.class_names)}, "
                f"threshold={s.threshold:.4f}, engine={self.engine.name})")

    @property
    def folder(self) -> Path:
        return self.model_folder.path

    @property
    def config(self) -> dict:
        return self.spec.to_dict()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def architecture(self) -> str:
        return self.spec.architecture

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    @property
    def malignant_classes(self) -> list[str]:
        return list(self.spec.malignant_classes)

    @property
    def threshold(self) -> float:
        return self.spec.threshold

    @property
    def temperature(self) -> float:
        return self.spec.temperature

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def weights_sha256(self) -> str:
        return self.spec.weights_sha256

    @property
    def answer_sha256(self) -> str:
        """The sha256 of the file whose numbers the answers are: the Keras weights for the float
        engines (``model.onnx`` is their export, equal within 1e-4), the int8 file for the int8
        engine, whose answers differ by its recorded agreement."""
        if self.engine.name == "onnx-int8":
            return self.spec.sha256[self.spec.int8.file]
        return self.weights_sha256

    @property
    def keras_model(self):
        """The ``keras.Model`` (raw RGB pixels in, logits out) from the checked weights, in Keras'
        safe mode; loaded on first use (imports TensorFlow)."""
        if self._keras_model is None:
            self._keras_model = self.model_folder.keras_model()
        return self._keras_model


def _folder_for(source, revision: str | None) -> Path:
    """The local folder for ``source``: the bundled default, a path (or a file inside a folder), or
    a Hugging Face repo id (downloaded into the HF cache)."""
    if source is None:
        return BUNDLED_MODEL
    if isinstance(source, ModelFolder):
        return source.path
    path = Path(os.path.expanduser(os.fspath(source))) if isinstance(source, (str, os.PathLike)) else None
    if path is None:
        raise ModelLoadError(f"{source!r}: not a model source (None, a folder, or a Hub repo id ORG/NAME)")
    if path.exists():
        return path.parent if path.is_file() else path
    if isinstance(source, str) and looks_like_repo_id(source):
        return download_model(source, revision=revision)
    raise ModelLoadError(f"{source}: no such model folder, and not a Hugging Face repo id (ORG/NAME)")


_DEFAULT: dict = {}
_DEFAULT_LOCK = threading.Lock()


def load_model(source=None, *, revision: str | None = None, engine: str = "auto", gate: bool = True) -> SkinmoleModel:
    """Load a skinmole model: the one way a model is made.

    ``source``: None for the bundled default model (loaded once per process and then reused), a
    local model folder (or a file inside it), a Hugging Face Hub repo id ``ORG/NAME`` (``revision``
    pins a branch, tag or commit), or an already loaded ``SkinmoleModel`` (returned as is).
    ``engine``: ``"auto"`` (ONNX Runtime for a folder with an ONNX file; a missing onnxruntime is an
    error that says so), ``"onnx"``, ``"keras"`` (TensorFlow; the explicit opt-in), or ``"onnx-int8"``
    (the folder's int8 model from ``skinmole quantise``: faster, answers within the agreement its
    config records; never chosen by ``"auto"``). ``gate=False``
    leaves the quality gate out (as when it is being fitted).
    """
    if isinstance(source, SkinmoleModel):
        return source
    if source is None:
        key = (engine, gate)
        with _DEFAULT_LOCK:
            if key not in _DEFAULT:
                _DEFAULT[key] = _load(BUNDLED_MODEL, engine, gate)
            return _DEFAULT[key]
    return _load(_folder_for(source, revision), engine, gate)


def _load(path: Path, engine: str, gate: bool) -> SkinmoleModel:
    from .engines import ENGINES, make_engine

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    folder = ModelFolder.open(path)
    keras_model = None
    if engine == "keras" or (engine != "onnx-int8" and not folder.config.onnx_file):
        keras_model = folder.keras_model()
        _check_keras(folder, keras_model)
    quality_gate = None
    if gate and folder.config.quality:
        from .quality import QualityGate

        quality_gate = QualityGate.from_folder(folder)
    return SkinmoleModel(folder, make_engine(folder, engine, keras_model), quality_gate, keras_model)


def _check_keras(folder: ModelFolder, keras_model) -> None:
    c = folder.config
    shape = tuple(keras_model.input_shape[1:])
    if shape != (c.input_size, c.input_size, 3):
        raise ModelLoadError(f"{folder.path}: input_size: the Keras model takes {shape}, the config says {c.input_size}")
    if keras_model.output_shape[-1] != c.n_logits:
        raise ModelLoadError(f"{folder.path}: class_names: the Keras model answers {keras_model.output_shape[-1]} "
                             f"logits, the config's head needs {c.n_logits}")
    try:
        features = keras_model.get_layer("features").output.shape[-1]
    except ValueError as exc:
        raise ModelLoadError(f"{folder.path}: the Keras model has no 'features' layer (the gate's input)") from exc
    if c.quality and features != c.quality.feature_dim:
        raise ModelLoadError(f"{folder.path}: quality: feature_dim is {c.quality.feature_dim}, the Keras model's "
                             f"features have {features}")


def read_config(folder) -> dict:
    """A model folder's config as a plain dict, validated (files not hashed): for reading a key."""
    return ModelFolder.open(folder, verify=False).config.to_dict()


def save_model_folder(folder, keras_model, config: dict) -> Path:
    """Write a new model folder (Keras' directory layout plus ``skinmole.json``); see ``ModelFolder.create``."""
    return ModelFolder.create(folder, keras_model, config).path

