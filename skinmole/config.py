"""skinmole's config of a model folder: typed, versioned, every value validated when it is parsed.

One parser (``ModelConfig.from_dict`` / ``from_json``) and one writer (``to_dict`` / ``to_json``), so
a value out of range is refused at load with a ``ModelLoadError`` naming the field, never met later
as a NaN probability or a 4 GB allocation. The head kind (one-logit binary or one logit per
diagnosis) is decided here, once, from ``class_names``.

Two layouts are read. Format 2 (written from now on): skinmole's config in ``skinmole.json`` beside
Keras' own directory layout (``config.json``, ``metadata.json``, ``model.weights.h5``), which
``keras.saving.load_model`` reads directly, also as ``hf://ORG/NAME``; ``sha256`` maps every file
the model loads to its digest. Format 1: skinmole's config in ``config.json`` beside ``model.keras``,
with ``weights_sha256`` / ``onnx_sha256`` / ``quality.sha256``. Keys skinmole does not interpret
(``preprocessing``, ``class_descriptions``, ``threshold_rule``, ``licence``, ...) are kept in
``extras`` and written back unchanged.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from .errors import ModelLoadError

SKINMOLE_FILE = "skinmole.json"
LEGACY_CONFIG_FILE = "config.json"
FORMAT_VERSION = 2
GATE_VERSION = 1
KERAS_DIR_FILES = ("config.json", "metadata.json", "model.weights.h5")  # Keras' zipped=False layout
LEGACY_KERAS_FILE = "model.keras"
BINARY_CLASSES = ("benign", "malignant")  # the class names of a one-logit head
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 1024
# Past these, logits / T overflow float64 (or every probability collapses to 0 or 1): refused.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0
MAX_FEATURE_DIM = 8192
MAX_CONFIG_BYTES = 4 * 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")

# The order keys are written in; any other extra key follows these.
_KEY_ORDER = (
    "format_version", "name", "version", "architecture", "input_size", "preprocessing", "class_names",
    "class_descriptions", "malignant_classes", "threshold", "threshold_rule", "temperature", "calibration",
    "metrics", "training", "licence", "dataset_citation", "weights_files", "onnx_file", "int8", "sha256", "quality",
)
_LEGACY_FILE_KEYS = ("weights_file", "weights_sha256", "onnx_file", "onnx_sha256")
_GATE_FLOATS = ("brightness_min", "brightness_max", "contrast_min", "sharpness_min", "colour_min", "ood_max")
_GATE_KEYS = ("version", "file", "min_side", *_GATE_FLOATS, "stats_size", "feature_dim")


def _fail(where: str, key: str, why: str):
    raise ModelLoadError(f"{where}: {key}: {why}")


def _int(where, key, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(where, key, f"must be an integer, not {type(value).__name__}")
    if not lo <= value <= hi:
        _fail(where, key, f"must be between {lo} and {hi}, not {value}")
    return int(value)


def _float(where, key, value, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(where, key, f"must be a number, not {type(value).__name__}")
    if not (math.isfinite(value) and lo <= value <= hi):
        _fail(where, key, f"must be a finite number between {lo:g} and {hi:g}, not {value!r}")
    return float(value)


def _str(where, key, value) -> str:
    if not isinstance(value, str) or not value:
        _fail(where, key, "must be a non-empty string")
    return value


def _names(where, key, value) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        _fail(where, key, "must be a non-empty list of names")
    if not all(isinstance(v, str) and v for v in value):
        _fail(where, key, "every entry must be a non-empty string")
    if len(set(value)) != len(value):
        _fail(where, key, "names must be unique")
    return tuple(value)


def _dict(where, key, value) -> dict:
    if not isinstance(value, dict):
        _fail(where, key, f"must be an object, not {type(value).__name__}")
    return value


def bare_file_name(where: str, key: str, value) -> str:
    """A file name inside the model folder: no directory part, no '..', not absolute."""
    name = _str(where, key, value)
    if "/" in name or "\\" in name or name in (".", "..") or "\0" in name or ":" in name:
        _fail(where, key, f"must be a bare file name inside the model folder, not {name!r}")
    return name


def _sha256(where, key, value) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        _fail(where, key, "must be a sha256 digest (64 lowercase hex characters)")
    return value


def _freeze(d: Mapping) -> Mapping:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class QualityConfig:
    """The quality gate's thresholds (see ``skinmole.quality``); its statistics are in ``file``."""

    file: str
    min_side: int
    brightness_min: float
    brightness_max: float
    contrast_min: float
    sharpness_min: float
    colour_min: float
    ood_max: float
    stats_size: int
    feature_dim: int
    version: int = GATE_VERSION
    extras: Mapping[str, Any] = field(default_factory=dict)  # rules, fitted_on, train_stats, val_* ...

    @classmethod
    def from_dict(cls, d, where: str = "config") -> "QualityConfig":
        w = f"{where}: quality"
        d = _dict(where, "quality", d)
        missing = [k for k in ("min_side", *_GATE_FLOATS[:-2], "ood_max", "feature_dim") if k not in d]
        if missing:
            _fail(w, missing[0], "missing")
        version = _int(w, "version", d.get("version", GATE_VERSION), 1, 10**6)
        if version > GATE_VERSION:
            _fail(w, "version", f"quality gate version {version} is newer than this skinmole reads")
        floats = {k: _float(w, k, d.get(k, 0.0), 0.0, 1e9) for k in _GATE_FLOATS}
        return cls(
            file=bare_file_name(w, "file", d.get("file", "quality.npz")),
            min_side=_int(w, "min_side", d["min_side"], 0, 1 << 20),
            stats_size=_int(w, "stats_size", d.get("stats_size", 0), 0, MAX_INPUT_SIZE),
            feature_dim=_int(w, "feature_dim", d["feature_dim"], 1, MAX_FEATURE_DIM),
            version=version,
            extras=_freeze({k: v for k, v in d.items() if k not in _GATE_KEYS and k != "sha256"}),
            **floats,
        )

    def to_dict(self) -> dict:
        out = {"version": self.version, "file": self.file, "min_side": self.min_side}
        out.update({k: getattr(self, k) for k in _GATE_FLOATS})
        out.update(stats_size=self.stats_size, feature_dim=self.feature_dim)
        out.update(self.extras)
        return out


@dataclass(frozen=True)
class Int8Config:
    """The opt-in int8 ONNX engine (``skinmole quantise``): its file, and how far its answers were
    measured from the float engine's when it was built (``agreement``), with the ``recipe`` that made it."""

    file: str
    split: str                 # the images the agreement was measured on
    n: int
    labels_flipped: int        # labels that differ from the float engine's at the threshold
    p99_abs_dp: float          # 99th percentile of |delta P(malignant)|
    max_abs_dp: float
    roc_auc_float: float | None
    roc_auc_int8: float | None
    recipe: Mapping[str, Any] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=dict)  # further measurements (machine, median ...)

    @classmethod
    def from_dict(cls, d, where: str = "config") -> "Int8Config":
        w = f"{where}: int8"
        d = _dict(where, "int8", d)
        agreement = _dict(w, "agreement", d.get("agreement"))
        wa = f"{w}: agreement"
        for key in ("split", "n", "labels_flipped", "p99_abs_dp", "max_abs_dp"):
            if key not in agreement:
                _fail(wa, key, "missing")
        n = _int(wa, "n", agreement["n"], 1, 10**9)

        def auc(key):
            value = agreement.get(key)
            return None if value is None else _float(wa, key, value, 0.0, 1.0)

        recipe = _dict(w, "recipe", d.get("recipe") or {})
        if "exclude" in recipe and recipe["exclude"]:
            _names(f"{w}: recipe", "exclude", recipe["exclude"])
        known = ("split", "n", "labels_flipped", "p99_abs_dp", "max_abs_dp", "roc_auc_float", "roc_auc_int8")
        return cls(
            file=bare_file_name(w, "file", d.get("file")),
            split=_str(wa, "split", agreement["split"]),
            n=n,
            labels_flipped=_int(wa, "labels_flipped", agreement["labels_flipped"], 0, n),
            p99_abs_dp=_float(wa, "p99_abs_dp", agreement["p99_abs_dp"], 0.0, 1.0),
            max_abs_dp=_float(wa, "max_abs_dp", agreement["max_abs_dp"], 0.0, 1.0),
            roc_auc_float=auc("roc_auc_float"),
            roc_auc_int8=auc("roc_auc_int8"),
            recipe=_freeze(recipe),
            extras=_freeze({k: v for k, v in agreement.items() if k not in known}),
        )

    def to_dict(self) -> dict:
        agreement = {"split": self.split, "n": self.n, "labels_flipped": self.labels_flipped,
                     "p99_abs_dp": self.p99_abs_dp, "max_abs_dp": self.max_abs_dp,
                     "roc_auc_float": self.roc_auc_float, "roc_auc_int8": self.roc_auc_int8, **self.extras}
        return {"file": self.file, "agreement": agreement, "recipe": dict(self.recipe)}


@dataclass(frozen=True)
class ModelConfig:
    """What a model folder says about its model. ``sha256`` maps every file it loads to its digest."""

    architecture: str
    input_size: int
    class_names: tuple[str, ...]
    malignant_classes: tuple[str, ...]
    threshold: float
    temperature: float
    weights_files: tuple[str, ...]  # what Keras loads: its directory layout, or one model.keras
    sha256: Mapping[str, str]
    onnx_file: str | None = None
    quality: QualityConfig | None = None
    int8: Int8Config | None = None  # the opt-in int8 ONNX engine, with its measured agreement
    name: str = ""
    version: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)  # {split: summary}, the split named inside
    training: Mapping[str, Any] = field(default_factory=dict)  # the settings the model was trained with
    extras: Mapping[str, Any] = field(default_factory=dict)  # keys kept as read, e.g. threshold_rule
    format_version: int = FORMAT_VERSION

    # -- what the values imply ----------------------------------------------------------------

    @property
    def binary(self) -> bool:
        """A one-logit head (class names ``benign``, ``malignant``), else one logit per diagnosis."""
        return self.class_names == BINARY_CLASSES

    @property
    def n_logits(self) -> int:
        return 1 if self.binary else len(self.class_names)

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the model may load, in the order it is hashed."""
        out = list(self.weights_files)
        out += [self.onnx_file] if self.onnx_file else []
        out += [self.int8.file] if self.int8 else []
        out += [self.quality.file] if self.quality else []
        return tuple(out)

    @property
    def keras_directory(self) -> bool:
        return self.weights_files == KERAS_DIR_FILES

    @property
    def weights_sha256(self) -> str:
        """The digest of the file holding the Keras weights (one value to quote)."""
        return self.sha256[self.weights_files[-1]]

    def with_changes(self, **changes) -> "ModelConfig":
        """A copy with fields replaced, validated as if parsed (``quality`` may be a dict)."""
        if isinstance(changes.get("quality"), Mapping):
            changes["quality"] = QualityConfig.from_dict(dict(changes["quality"]))
        if isinstance(changes.get("int8"), Mapping):
            changes["int8"] = Int8Config.from_dict(dict(changes["int8"]))
        return ModelConfig.from_dict(replace(self, **changes).to_dict())

    # -- one parser ---------------------------------------------------------------------------

    @classmethod
    def from_json(cls, text: str | bytes, where: str = SKINMOLE_FILE) -> "ModelConfig":
        if len(text) > MAX_CONFIG_BYTES:
            raise ModelLoadError(f"{where}: larger than {MAX_CONFIG_BYTES} bytes; not a skinmole config")
        try:
            data = json.loads(text)  # NaN/Infinity parse; every typed number is checked below
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ModelLoadError(f"{where}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, where)

    @classmethod
    def from_dict(cls, d, where: str = "config") -> "ModelConfig":
        if not isinstance(d, dict):
            raise ModelLoadError(f"{where}: not a skinmole config (not a JSON object)")
        required = ("format_version", "architecture", "input_size", "class_names", "malignant_classes",
                    "threshold", "temperature")
        missing = [k for k in required if k not in d]
        if missing:
            raise ModelLoadError(f"{where}: not a skinmole config (missing {', '.join(missing)})")
        version = _int(where, "format_version", d["format_version"], 1, 10**6)
        if version > FORMAT_VERSION:
            _fail(where, "format_version", f"{version} is newer than this skinmole reads ({FORMAT_VERSION})")
        class_names = _names(where, "class_names", d["class_names"])
        malignant = _names(where, "malignant_classes", d["malignant_classes"])
        if not set(malignant) <= set(class_names):
            _fail(where, "malignant_classes", f"{sorted(set(malignant) - set(class_names))} not in class_names")
        if len(malignant) == len(class_names):
            _fail(where, "malignant_classes", "every class is malignant: the model could not say benign")
        if class_names == BINARY_CLASSES and malignant != ("malignant",):
            _fail(where, "malignant_classes", "a benign/malignant head has malignant_classes ['malignant']")
        quality = QualityConfig.from_dict(d["quality"], where) if d.get("quality") else None
        onnx = bare_file_name(where, "onnx_file", d["onnx_file"]) if d.get("onnx_file") else None
        int8 = Int8Config.from_dict(d["int8"], where) if d.get("int8") else None
        if int8 is not None and version == 1:
            _fail(where, "int8", "needs format_version 2 (skinmole.json)")
        if int8 is not None and int8.file in (onnx, quality.file if quality else None):
            _fail(where, "int8", f"file {int8.file!r} is already another file of the model")
        if version == 1:
            weights, sha = cls._legacy_files(d, where, onnx, quality)
        else:
            weights, sha = cls._files(d, where, onnx, quality, int8)
        known = {"name", "version", "metrics", "training", "weights_files", "sha256", *required, "quality",
                 "int8", *_LEGACY_FILE_KEYS}
        return cls(
            format_version=version,
            architecture=_str(where, "architecture", d["architecture"]),
            input_size=_int(where, "input_size", d["input_size"], MIN_INPUT_SIZE, MAX_INPUT_SIZE),
            class_names=class_names,
            malignant_classes=malignant,
            threshold=_float(where, "threshold", d["threshold"], 0.0, 1.0),
            temperature=_float(where, "temperature", d["temperature"], MIN_TEMPERATURE, MAX_TEMPERATURE),
            weights_files=weights,
            sha256=_freeze(sha),
            onnx_file=onnx,
            quality=quality,
            int8=int8,
            name=str(d.get("name") or ""),
            version=str(d.get("version") or ""),
            metrics=_freeze(_dict(where, "metrics", d.get("metrics") or {})),
            training=_freeze(_dict(where, "training", d.get("training") or {})),
            extras=_freeze({k: v for k, v in d.items() if k not in known}),
        )

    @staticmethod
    def _files(d, where, onnx, quality, int8=None) -> tuple[tuple[str, ...], dict]:
        if "weights_files" not in d or "sha256" not in d:
            raise ModelLoadError(f"{where}: not a skinmole config (missing weights_files or sha256)")
        weights = tuple(bare_file_name(where, "weights_files", n) for n in _names(where, "weights_files", d["weights_files"]))
        if weights not in (KERAS_DIR_FILES, (LEGACY_KERAS_FILE,)):
            _fail(where, "weights_files", f"must be {list(KERAS_DIR_FILES)} or ['{LEGACY_KERAS_FILE}']")
        sha = _dict(where, "sha256", d["sha256"])
        names = set(weights) | {onnx, quality.file if quality else None, int8.file if int8 else None} - {None}
        for name in sorted(names):
            if name not in sha:
                _fail(where, "sha256", f"no digest recorded for {name}")
        return weights, {n: _sha256(where, f"sha256[{n}]", sha[n]) for n in sorted(names)}  # others: unused

    @staticmethod
    def _legacy_files(d, where, onnx, quality) -> tuple[tuple[str, ...], dict]:
        if "weights_sha256" not in d:
            raise ModelLoadError(f"{where}: not a skinmole config (missing weights_sha256)")
        weights = bare_file_name(where, "weights_file", d.get("weights_file", LEGACY_KERAS_FILE))
        if weights != LEGACY_KERAS_FILE:
            _fail(where, "weights_file", f"must be {LEGACY_KERAS_FILE}, the file Keras loads")
        sha = {weights: _sha256(where, "weights_sha256", d["weights_sha256"])}
        if onnx:
            sha[onnx] = _sha256(where, "onnx_sha256", d.get("onnx_sha256"))
        if quality:
            sha[quality.file] = _sha256(where, "quality: sha256", d["quality"].get("sha256"))
        return (weights,), sha

    # -- one writer ---------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The config as written to ``skinmole.json`` (always the current format)."""
        values = {
            "format_version": FORMAT_VERSION, "name": self.name, "version": self.version,
            "architecture": self.architecture, "input_size": self.input_size,
            "class_names": list(self.class_names), "malignant_classes": list(self.malignant_classes),
            "threshold": self.threshold, "temperature": self.temperature,
            "metrics": dict(self.metrics), "training": dict(self.training),
            "weights_files": list(self.weights_files), "onnx_file": self.onnx_file,
            "sha256": {n: self.sha256[n] for n in self.files if n in self.sha256},
            "quality": self.quality.to_dict() if self.quality else None,
            "int8": self.int8.to_dict() if self.int8 else None,
            **self.extras,
        }
        order = [k for k in _KEY_ORDER if k in values] + [k for k in values if k not in _KEY_ORDER]
        optional = ("onnx_file", "int8", "quality", "metrics", "training")  # written only when set
        return {k: values[k] for k in order if k not in optional or values[k]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
