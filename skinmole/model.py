"""The model object: a model folder's config plus its inference engine, and how folders are found.

A model folder holds ``model.keras``, ``config.json`` (labels, input size, threshold, temperature,
sha256 of every weights file, metrics) and whatever the quality gate stores. ``load_model`` finds
the folder (the bundled default, a local path or a Hub repo id), verifies the sha256 and builds the
fastest engine available. TensorFlow/Keras is imported only when the Keras model is asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import ModelLoadError  # noqa: F401  (re-exported: skinmole.model.ModelLoadError)

CONFIG_FILE = "config.json"
KERAS_FILE = "model.keras"
FORMAT_VERSION = 1
BUNDLED_MODEL = Path(__file__).resolve().parent / "weights" / "default"
REQUIRED_KEYS = (
    "format_version", "architecture", "input_size", "class_names", "malignant_classes",
    "threshold", "temperature", "weights_sha256",
)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class SkinmoleModel:
    """A loaded model: ``config`` (dict), ``folder``, the engine, and ``keras_model`` on demand."""

    def __init__(self, folder: Path, config: dict, engine: str = "auto"):
        self.folder = Path(folder)
        self.config = config
        self._keras_model = None
        self._engine = None
        self._gate = None
        self._engine_choice = engine

    def __repr__(self) -> str:
        c = self.config
        return (f"SkinmoleModel({c['architecture']}, {self.input_size}px, classes={c['class_names']}, "
                f"threshold={self.threshold:.4f}, engine={self.engine.name})")

    @property
    def input_size(self) -> int:
        return int(self.config["input_size"])

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    @property
    def malignant_classes(self) -> list[str]:
        return list(self.config["malignant_classes"])

    @property
    def threshold(self) -> float:
        return float(self.config["threshold"])

    @property
    def temperature(self) -> float:
        return float(self.config["temperature"])

    @property
    def version(self) -> str:
        return str(self.config.get("version", ""))

    @property
    def weights_sha256(self) -> str:
        return self.config["weights_sha256"]

    @property
    def keras_model(self):
        """The ``keras.Model`` (raw RGB pixels in, logits out), loaded in Keras' safe mode."""
        if self._keras_model is None:
            import keras

            from . import colour_constancy  # noqa: F401  (registers the ShadesOfGray layer for safe mode)

            self._keras_model = keras.saving.load_model(self.folder / KERAS_FILE, compile=False, safe_mode=True)
        return self._keras_model

    @property
    def quality_gate(self):
        """The image-quality / out-of-distribution gate, or None for a model folder without one."""
        if self._gate is None and self.config.get("quality"):
            from .quality import QualityGate

            self._gate = QualityGate.from_folder(self.folder, self.config["quality"])
        return self._gate

    @property
    def engine(self):
        """The inference engine: ``run(batch_uint8) -> (logits, features)``."""
        if self._engine is None:
            from .engines import make_engine

            self._engine = make_engine(self, self._engine_choice)
        return self._engine


def verify_sha256(folder: Path, name: str, expected: str | None, what: str = "the weights") -> None:
    """Refuse a file of a model folder whose sha256 is not the one config.json records."""
    path = folder / name
    if not path.is_file():
        raise ModelLoadError(f"{folder}: {name} is missing ({what})")
    actual = sha256_file(path)
    if expected != actual:
        raise ModelLoadError(
            f"{folder}: sha256 of {name} is {actual}, but config.json records {expected}: "
            f"{what} were changed or corrupted"
        )


def read_config(folder: Path) -> dict:
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise ModelLoadError(f"{folder}: not a skinmole model folder (no {CONFIG_FILE})")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{cfg_path}: not valid JSON ({exc})") from exc
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ModelLoadError(f"{cfg_path}: not a skinmole config (missing {', '.join(missing)})")
    if config["format_version"] > FORMAT_VERSION:
        raise ModelLoadError(f"{cfg_path}: format_version {config['format_version']} is newer than this skinmole reads")
    return config


def checked_config(folder, *, onnx: bool = True) -> dict:
    """The folder's config.json, after checking the sha256 of the weights (and of the ONNX file,
    unless ``onnx=False``: the exporter rebuilds it)."""
    folder = Path(folder)
    config = read_config(folder)
    verify_sha256(folder, config.get("weights_file", KERAS_FILE), config["weights_sha256"])
    if onnx and config.get("onnx_file"):
        verify_sha256(folder, config["onnx_file"], config.get("onnx_sha256"), "the ONNX weights")
    return config


def load_model_folder(folder, engine: str = "auto") -> SkinmoleModel:
    """Load a local model folder after checking every recorded sha256."""
    folder = Path(folder)
    model = SkinmoleModel(folder, checked_config(folder), engine)
    model.quality_gate  # noqa: B018 - load and sha256-check the quality statistics now, not at first predict
    return model


def _looks_like_repo_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~")) and "\\" not in source


def resolve_folder(source=None, *, revision: str | None = None) -> Path:
    """The local folder for ``source``: bundled default, a path, or a Hub repo id (downloaded)."""
    if source is None:
        return BUNDLED_MODEL
    path = Path(os.path.expanduser(str(source)))
    if path.exists():
        if path.is_file():
            path = path.parent
        return path
    if isinstance(source, str) and _looks_like_repo_id(source):
        from .hub import download_model

        return download_model(source, revision=revision)
    raise ModelLoadError(f"{source}: no such model folder, and not a Hugging Face repo id (ORG/NAME)")


_DEFAULT_CACHE: dict = {}


def load_model(source=None, *, revision: str | None = None, engine: str = "auto") -> SkinmoleModel:
    """Load a skinmole model.

    ``source``: None for the bundled default model, a local model folder (or a file inside it), or a
    Hugging Face Hub repo id ``ORG/NAME`` (``revision`` pins a branch, tag or commit). ``engine``:
    ``"auto"`` (ONNX Runtime where installed, else Keras), ``"onnx"`` or ``"keras"``.
    """
    if isinstance(source, SkinmoleModel):
        return source
    return load_model_folder(resolve_folder(source, revision=revision), engine)


def default_model() -> SkinmoleModel:
    """The bundled model, loaded once per process (``predict`` without ``model=``)."""
    if "model" not in _DEFAULT_CACHE:
        _DEFAULT_CACHE["model"] = load_model()
    return _DEFAULT_CACHE["model"]


def resolve_model(source=None, *, revision: str | None = None) -> SkinmoleModel:
    """What ``model=`` arguments mean: None is the bundled model (loaded once per process), anything
    else goes to ``load_model``."""
    return default_model() if source is None else load_model(source, revision=revision)


def save_model_folder(folder, keras_model, config: dict) -> Path:
    """Write ``model.keras`` and ``config.json`` (with the weights' sha256) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keras_model.save(folder / KERAS_FILE)
    config = dict(config)
    config.setdefault("format_version", FORMAT_VERSION)
    config["weights_file"] = KERAS_FILE
    config["weights_sha256"] = sha256_file(folder / KERAS_FILE)
    write_config(folder, config)
    return folder


def write_config(folder, config: dict) -> None:
    (Path(folder) / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=False) + "\n")
