"""A model folder on disk: its typed config, every file it loads checked, and the one writer of its config.

``ModelFolder.open`` parses ``skinmole.json`` (or a format-1 ``config.json``), refuses any value out of
range, and checks the sha256 of every file the config names before anything is loaded. Loading then
goes through ``read_verified``, which hashes the very bytes it returns, so a file swapped after the
check is refused too, and nothing outside the folder can be reached (file names are bare names).
Training, ONNX export, gate fitting and evaluation change the config only through ``update`` (or
``create`` for a new folder): one writer, one format, the digests always those of the files.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .config import KERAS_DIR_FILES, LEGACY_CONFIG_FILE, MAX_CONFIG_BYTES, SKINMOLE_FILE, ModelConfig
from .errors import ModelLoadError

MAX_FILE_BYTES = 1 << 30  # no file of a model folder is near this; a bigger one is not loaded


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_bounded(path: Path, limit: int, why: str) -> bytes:
    """The whole file, refused (``ModelLoadError``) when larger than ``limit``; never reads past it."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ModelLoadError(f"{path}: larger than {limit} bytes; {why}")
        data = f.read(size + 1)
    if len(data) > size:  # grew while being read
        raise ModelLoadError(f"{path}: changed while being read")
    return data


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ModelFolder:
    """An opened model folder. ``config`` is the validated ``ModelConfig``; ``path`` the folder."""

    def __init__(self, path: Path, config: ModelConfig, config_file: str):
        self.path = Path(path)
        self.config = config
        self.config_file = config_file  # skinmole.json, or config.json in a format-1 folder

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.path)!r})"

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path, *, verify: bool = True) -> "ModelFolder":
        """Open and validate a folder; with ``verify`` (the default) check every file's sha256 now."""
        path = Path(path)
        if not path.is_dir():
            raise ModelLoadError(f"{path}: not a skinmole model folder (not a folder)")
        name = SKINMOLE_FILE if (path / SKINMOLE_FILE).is_file() else LEGACY_CONFIG_FILE
        cfg_path = path / name
        if not cfg_path.is_file():
            raise ModelLoadError(f"{path}: not a skinmole model folder (no {SKINMOLE_FILE} or {LEGACY_CONFIG_FILE})")
        text = _read_bounded(cfg_path, MAX_CONFIG_BYTES, "not a skinmole config")
        try:
            config = ModelConfig.from_json(text, str(cfg_path))
        except ModelLoadError:
            if name == LEGACY_CONFIG_FILE and b'"class_name"' in text[:4096] and b'"class_names"' not in text:
                raise ModelLoadError(f"{path}: a Keras model folder without {SKINMOLE_FILE}: not a skinmole model folder") from None
            raise
        folder = cls(path, config, name)
        if verify:
            folder.verify()
        return folder

    def verify(self) -> None:
        """Check that every file the config names is there, inside the folder, with its recorded sha256."""
        for name in self.config.files:
            self._check(name, sha256_file(self._file(name)))

    def _file(self, name: str) -> Path:
        path = self.path / name
        if not path.is_file():
            raise ModelLoadError(f"{self.path}: {name} is missing ({self._what(name)})")
        return path

    def _what(self, name: str) -> str:
        c = self.config
        if name == c.onnx_file:
            return "the ONNX weights"
        if c.int8 and name == c.int8.file:
            return "the int8 ONNX weights"
        if c.quality and name == c.quality.file:
            return "the quality statistics"
        return "the Keras weights" if name in c.weights_files else "a file of the model"

    def _check(self, name: str, actual: str) -> None:
        # The digest of the file is not printed: the message must not become a way to hash any file.
        if actual != self.config.sha256[name]:
            raise ModelLoadError(
                f"{self.path}: sha256 of {name} does not match the one {self.config_file} records: "
                f"{self._what(name)} were changed or corrupted")

    def read_verified(self, name: str) -> bytes:
        """The bytes of ``name``, after checking that exactly these bytes have the recorded sha256."""
        if name not in self.config.sha256:
            raise ModelLoadError(f"{self.path}: {name} is not a file of this model (no sha256 recorded)")
        data = _read_bounded(self._file(name), MAX_FILE_BYTES, "not loaded")
        self._check(name, sha256_bytes(data))
        return data

    # -- what the engines load ----------------------------------------------------------------

    def keras_model(self):
        """The ``keras.Model`` (raw RGB pixels in, logits out) from the verified weights, in Keras'
        safe mode. The checked bytes are written to a private temporary folder and loaded from there."""
        contents = {name: self.read_verified(name) for name in self.config.weights_files}
        try:
            import keras
        except ImportError as exc:
            raise ModelLoadError(f"{self.path}: the Keras engine needs TensorFlow and Keras: "
                                 "pip install 'skinmole[keras]' (or tensorflow keras)") from exc
        from . import colour_constancy  # noqa: F401  (registers the ShadesOfGray layer for safe mode)

        with tempfile.TemporaryDirectory(prefix="skinmole-keras-") as tmp:
            for name, data in contents.items():
                (Path(tmp) / name).write_bytes(data)
            source = tmp if self.config.keras_directory else os.path.join(tmp, self.config.weights_files[0])
            try:
                return keras.saving.load_model(source, compile=False, safe_mode=True)
            except Exception as exc:  # noqa: BLE001 - a file Keras cannot read is a load error
                raise ModelLoadError(f"{self.path}: Keras cannot load the weights ({type(exc).__name__}: {exc})") from exc

    # -- the one writer -----------------------------------------------------------------------

    def update(self, *, written=(), **changes) -> ModelConfig:
        """Change config fields (``ModelConfig`` names: ``metrics=``, ``quality=``, ``onnx_file=`` ...)
        and write the config. ``written``: the files this step (re)wrote; their sha256 is recorded
        now. Every other file keeps its recorded digest, so an update never blesses a changed file.
        A format-1 folder is rewritten as ``skinmole.json`` (its old ``config.json`` is removed)."""
        sha = dict(self.config.sha256)
        for name in written:
            sha[name] = sha256_file(self._file(name))
        new = self.config.with_changes(sha256=sha, **changes)  # validated; refuses a file without a digest
        self._write(new)
        return new

    def _write(self, config: ModelConfig) -> None:
        _write_atomically(self.path / SKINMOLE_FILE, config.to_json().encode())
        if self.config_file == LEGACY_CONFIG_FILE and not config.keras_directory:
            (self.path / LEGACY_CONFIG_FILE).unlink(missing_ok=True)
        self.config, self.config_file = config, SKINMOLE_FILE

    def upgrade(self) -> "ModelFolder":
        """Rewrite a format-1 folder (``config.json`` + ``model.keras``) in the current layout, in place:
        the same weights in Keras' directory layout, ``skinmole.json``; ONNX file and gate untouched.
        Refused (nothing changed) unless the rewritten weights give bit-identical logits."""
        import numpy as np

        if self.config.keras_directory:
            return self
        keras_model = self.keras_model()
        pixels = np.random.default_rng(0).integers(0, 256, (4, *keras_model.input_shape[1:]), dtype=np.uint8)
        before = np.asarray(keras_model.predict_on_batch(pixels.astype(np.float32)))
        old = self.config
        values = old.to_dict()
        with tempfile.TemporaryDirectory(prefix="skinmole-upgrade-", dir=self.path) as tmp:
            staged = ModelFolder.create(tmp, keras_model, values)
            after = np.asarray(staged.keras_model().predict_on_batch(pixels.astype(np.float32)))
            if not np.array_equal(before, after):
                raise ModelLoadError(f"{self.path}: the weights rewritten in Keras' directory layout give "
                                     "different logits; the folder was left as it was")
            new = old.with_changes(weights_files=KERAS_DIR_FILES, sha256={**old.sha256, **staged.config.sha256})
            _write_atomically(self.path / SKINMOLE_FILE, new.to_json().encode())
            for name in KERAS_DIR_FILES:
                os.replace(Path(tmp) / name, self.path / name)  # config.json: Keras' from now on
        for name in old.weights_files:
            (self.path / name).unlink(missing_ok=True)
        return ModelFolder.open(self.path)

    @classmethod
    def create(cls, path, keras_model, config: dict) -> "ModelFolder":
        """Write a new model folder: the Keras model in Keras' directory layout (``config.json``,
        ``metadata.json``, ``model.weights.h5``: ``keras.saving.load_model`` reads the folder, also as
        ``hf://ORG/NAME``) and ``skinmole.json`` with the sha256 of each file. ``config``: the
        config's fields as a dict (file names and digests are filled in here)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name in (SKINMOLE_FILE, *KERAS_DIR_FILES):  # new files: a half-written folder is not a model
            (path / name).unlink(missing_ok=True)          # folder, and a hard-linked old copy is not written into
        keras_model.save(str(path), zipped=False)
        values = {k: v for k, v in dict(config).items()
                  if k not in ("weights_file", "weights_sha256", "onnx_file", "onnx_sha256", "quality", "int8", "sha256")}
        values.update(format_version=2, weights_files=list(KERAS_DIR_FILES),
                      sha256={n: sha256_file(path / n) for n in KERAS_DIR_FILES})
        new = ModelConfig.from_dict(values, str(path / SKINMOLE_FILE))
        _write_atomically(path / SKINMOLE_FILE, new.to_json().encode())
        return cls(path, new, SKINMOLE_FILE)
