"""Labelled image sets (a CSV or one folder per class), the HAM10000 facts, and the pixel cache.

A labelled set is read once into plain lists; ``load_pixels`` decodes every image with the same
``images.load_image``/``to_model_input`` the served model uses, and caches the result as .npy.
"""

from __future__ import annotations

import csv
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import load_model_input
from .errors import DatasetError  # noqa: F401  (defined in the leaf module; importable from here too)

from .ham10000 import DX_CLASSES, DX_NAMES, MALIGNANT_DX  # noqa: E402,F401  (the registry; importable from here too)
BINARY_CLASSES = ["benign", "malignant"]
# A diagnosis the source does not give (ISIC 2020's benign "unknown"): the image still teaches
# benign vs malignant, and training asks only that the model put it among its label's classes.
UNKNOWN_DX = "unknown"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
HAM10000_ENV = "SKINMOLE_HAM10000"


@dataclass
class LabelledSet:
    """Images with binary labels, and the diagnosis and metadata where the source has them."""

    paths: list[Path]
    labels: list[str]  # "benign" | "malignant"
    dx: list[str] | None = None
    metadata: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def y(self) -> np.ndarray:
        return np.array([label == "malignant" for label in self.labels], dtype=np.int64)

    @property
    def dx_index(self) -> np.ndarray:
        if self.dx is None:
            raise DatasetError(f"{self.source}: has no 'dx' column")
        if UNKNOWN_DX in self.dx:
            raise DatasetError(f"{self.source}: has images of unknown diagnosis (use allowed_classes)")
        return np.array([DX_CLASSES.index(d) for d in self.dx], dtype=np.int64)

    @property
    def has_unknown_dx(self) -> bool:
        return self.dx is not None and UNKNOWN_DX in self.dx

    def allowed_classes(self) -> np.ndarray:
        """(N, 7) 0/1: the diagnosis where it is known, else every diagnosis of the image's label."""
        if self.dx is None:
            raise DatasetError(f"{self.source}: has no 'dx' column")
        out = np.zeros((len(self), len(DX_CLASSES)), dtype="float32")
        for i, (d, label) in enumerate(zip(self.dx, self.labels)):
            if d == UNKNOWN_DX:
                out[i] = [(c in MALIGNANT_DX) == (label == "malignant") for c in DX_CLASSES]
            else:
                out[i, DX_CLASSES.index(d)] = 1
        return out

    def subset(self, index) -> "LabelledSet":
        index = list(index)
        return LabelledSet(
            [self.paths[i] for i in index],
            [self.labels[i] for i in index],
            [self.dx[i] for i in index] if self.dx is not None else None,
            {k: [v[i] for i in index] for k, v in self.metadata.items()},
            self.source,
        )


def concatenate(first: LabelledSet, second: LabelledSet) -> LabelledSet:
    """``first`` then ``second`` (e.g. extra training images): metadata columns of either, "" where absent."""
    dx = None
    if first.dx is not None and second.dx is not None:
        dx = first.dx + second.dx
    columns = list(first.metadata) + [c for c in second.metadata if c not in first.metadata]
    metadata = {c: first.metadata.get(c, [""] * len(first)) + second.metadata.get(c, [""] * len(second)) for c in columns}
    return LabelledSet(first.paths + second.paths, first.labels + second.labels, dx, metadata,
                       f"{first.source} + {second.source}")


def ham10000_root() -> Path | None:
    """The HAM10000 folder: ``$SKINMOLE_HAM10000`` or ``../shared/data/ham10000`` next to the repo."""
    env = os.environ.get(HAM10000_ENV)
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parent.parent
    candidates += [repo.parent / "shared" / "data" / "ham10000", Path.cwd().parent / "shared/data/ham10000"]
    for c in candidates:
        if (c / "labels.csv").is_file():
            return c
    return None


def ham10000_labels() -> Path | None:
    """HAM10000's ``labels.csv`` (see ``ham10000_root``), or None when the data set is not found."""
    root = ham10000_root()
    return root / "labels.csv" if root is not None else None


def isic2020_subset_labels() -> Path | None:
    """``isic2020-subset/labels.csv`` beside the HAM10000 folder: 2,700 ISIC 2020 images from many
    centres (extra training images; the quality gate's test of other cameras), or None."""
    root = ham10000_root()
    path = root.parent / "isic2020-subset" / "labels.csv" if root is not None else None
    return path if path is not None and path.is_file() else None


def read_csv(csv_path, image_dir=None, split: str | None = None) -> LabelledSet:
    """Read ``image,label[,dx,split,...]`` rows; images resolve against ``image_dir`` or
    the CSV's ``images/`` folder or the CSV's own folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: no such CSV file")
    base = Path(image_dir) if image_dir else (csv_path.parent / "images" if (csv_path.parent / "images").is_dir() else csv_path.parent)
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if "image" not in fields or ("label" not in fields and "dx" not in fields):
            raise DatasetError(f"{csv_path}: needs an 'image' column and a 'label' or 'dx' column")
        rows = [r for r in reader if split is None or r.get("split") == split]
    if split is not None and "split" not in fields:
        raise DatasetError(f"{csv_path}: has no 'split' column to select {split!r} from")
    paths, labels, dxs = [], [], []
    for n, row in enumerate(rows, start=2):
        name = row["image"]
        path = base / name
        if not path.suffix:
            path = path.with_suffix(".jpg")
        dx = (row.get("dx") or "").strip().lower() or None
        label = (row.get("label") or "").strip().lower()
        if dx == UNKNOWN_DX and not label:
            raise DatasetError(f"{csv_path}: row {n}: dx {UNKNOWN_DX!r} needs a benign/malignant label")
        if not label and dx:
            label = "malignant" if dx in MALIGNANT_DX else "benign"
        if label not in BINARY_CLASSES:
            raise DatasetError(f"{csv_path}: row {n}: unknown label {label!r} (expected benign or malignant)")
        if dx is not None and dx not in DX_CLASSES and dx != UNKNOWN_DX:
            raise DatasetError(f"{csv_path}: row {n}: unknown dx {dx!r} (expected one of {DX_CLASSES} or {UNKNOWN_DX!r})")
        if dx in DX_CLASSES and (dx in MALIGNANT_DX) != (label == "malignant"):
            raise DatasetError(f"{csv_path}: row {n}: label {label!r} contradicts dx {dx!r}")
        paths.append(path)
        labels.append(label)
        dxs.append(dx)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{csv_path}: {len(missing)} image files are missing, e.g. {missing[0]}")
    meta_cols = [c for c in ("age", "sex", "localization", "lesion_id", "dx_type", "source") if c in fields]
    metadata = {c: [r.get(c, "") for r in rows] for c in meta_cols}
    has_dx = all(d is not None for d in dxs) and bool(dxs)
    result = LabelledSet(paths, labels, dxs if has_dx else None, metadata, f"{csv_path}" + (f"[{split}]" if split else ""))
    _check_classes(result)
    return result


def read_folder(root) -> LabelledSet:
    """One subfolder per class: ``benign``/``malignant``, or the seven HAM10000 diagnoses."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    paths, labels, dxs = [], [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        cls = sub.name.lower()
        if cls not in BINARY_CLASSES and cls not in DX_CLASSES:
            raise DatasetError(f"{root}: unknown class folder {sub.name!r} (expected benign/malignant or {DX_CLASSES})")
        for f in sorted(sub.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(f)
                dxs.append(cls if cls in DX_CLASSES else None)
                labels.append(cls if cls in BINARY_CLASSES else ("malignant" if cls in MALIGNANT_DX else "benign"))
    has_dx = bool(dxs) and all(d is not None for d in dxs)
    result = LabelledSet(paths, labels, dxs if has_dx else None, {}, str(root))
    _check_classes(result)
    return result


def load_set(source, split: str | None = None) -> LabelledSet:
    """A labelled set from a CSV file or a class-folder tree."""
    p = Path(source)
    return read_csv(p, split=split) if p.suffix.lower() == ".csv" else read_folder(p)


def _check_classes(s: LabelledSet) -> None:
    if not s.paths:
        raise DatasetError(f"{s.source}: no labelled images found")
    for cls in BINARY_CLASSES:
        if cls not in s.labels:
            raise DatasetError(f"{s.source}: class {cls!r} has no images")


def load_pixels(s: LabelledSet, size: int, cache_dir=None, workers: int = 4) -> np.ndarray:
    """Decode and resize every image of ``s`` into one (N, size, size, 3) uint8 array, cached."""
    cache_file = None
    if cache_dir is not None:
        key = hashlib.sha1(("\n".join(map(str, s.paths)) + f"|{size}").encode()).hexdigest()[:16]
        cache_file = Path(cache_dir) / f"pixels_{size}_{key}.npy"
        if cache_file.is_file():
            return np.load(cache_file)

    def one(path):
        return load_model_input(path, size)[0]

    with ThreadPoolExecutor(workers) as pool:
        out = np.stack(list(pool.map(one, s.paths)))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed: two workers filling one cache never read a half-written file.
        tmp = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, out)
        os.replace(tmp, cache_file)
    return out
