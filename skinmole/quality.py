"""Say "I can't judge this image" instead of guessing: pixel checks plus an out-of-distribution score.

A classifier answers every input, even a cat or a blurred phone shot. ``QualityGate.assess`` runs
after the model on the same batch and refuses an image when

- the original is too small (shorter side under ``min_side``: the model would see upscaled mush);
- the model input is too dark, too bright, washed out (low contrast), grey-scale (no colour) or
  blurred (low variance of the Laplacian of its grayscale; measured at the fixed model-input size,
  so resolution-independent);
- the model's penultimate features (scaled to unit length) are far from the training images'
  (Mahalanobis distance with a shrinkage covariance): "not a dermoscopic image of a skin lesion".

Every threshold is fitted from the training (pixel checks) and validation (distance) images by
``fit_quality_gate`` and stored with the model: the numbers in the config's ``quality`` entry, the
feature mean and precision matrix in ``quality.npz`` (sha256 checked, array shapes read from the
headers and checked before anything is inflated). Serving needs only
numpy; fitting imports scikit-learn and the data helpers lazily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import GATE_VERSION, QualityConfig
from .errors import ModelLoadError
from .records import Record

QUALITY_FILE = "quality.npz"
NPY_HEADER_SLACK = 1 << 16  # an .npy header is a few hundred bytes
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
BLACK_LEVEL = 24.0  # luma at or under this is the black border/background, not the lit skin

# How thresholds are derived (recorded in config["quality"]["rules"] at fit time).
PIXEL_PERCENTILE = 0.5   # low/high tail of the training images used as the reference point ...
PIXEL_MARGIN = 0.5       # ... then moved this fraction of the way to the impossible extreme (0 or 255)
SIDE_PERCENTILE = 1.0
OOD_QUANTILE = 0.99      # of the validation images' distances ...
OOD_MARGIN = 1.05        # ... times this, so >= 99% of validation images pass with a little slack

CHECK_ORDER = ("too_small", "too_dark", "too_bright", "low_contrast", "no_colour", "blurred", "not_dermoscopy")
MESSAGES = {
    "too_small": "The image is too small to judge ({w}x{h} pixels; the shorter side needs at least {min_side}).",
    "too_dark": "The image is too dark to judge. Retake it with more light.",
    "too_bright": "The image is too bright or overexposed to judge. Retake it with less light or glare.",
    "low_contrast": "The image is washed out or nearly uniform: no lesion detail is visible.",
    "no_colour": "The image is grey-scale or almost colourless; the model needs a colour photo of the skin.",
    "blurred": "The image is too blurred to judge. Hold the camera still and focus on the lesion.",
    "not_dermoscopy": ("This does not look like a dermoscopic image of a skin lesion, "
                       "which is the only kind of image this model can judge."),
}


def pixel_stats(batch: np.ndarray) -> dict[str, np.ndarray]:
    """Brightness (mean luma), contrast (luma std), colourfulness (mean of max - min over R, G, B:
    0 for grey) and sharpness (variance of the 4-neighbour Laplacian of the luma) of each model
    input in ``batch`` (N, S, S, 3) uint8.

    Brightness and colourfulness are averaged over the lit pixels (luma above ``BLACK_LEVEL``), at
    least a quarter of the image: a dermatoscope's black field-of-view border is not underexposure.
    """
    batch = np.asarray(batch)
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected a (N, S, S, 3) batch, got shape {batch.shape}")
    # Written for speed (the gate runs on every image): whole-batch passes, reductions as dot
    # products; a max/min over the colour axis would be 10x slower than over channel views.
    n = batch.shape[0]
    g = batch.astype(np.float32) @ LUMA  # (N, S, S) luma
    r, gr, b = batch[..., 0], batch[..., 1], batch[..., 2]
    chroma = np.maximum(np.maximum(r, gr), b) - np.minimum(np.minimum(r, gr), b)  # uint8, no overflow
    flat = g.reshape(n, -1)
    lit = (flat > BLACK_LEVEL).astype(np.float32)
    lit_area = np.maximum(lit.sum(axis=1), 0.25 * flat.shape[1])
    lap = g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:] - 4.0 * g[:, 1:-1, 1:-1]
    return {
        "brightness": np.einsum("ij,ij->i", flat, lit) / lit_area,
        "contrast": np.sqrt(_row_variance(flat)),
        "colourfulness": np.einsum("ij,ij->i", chroma.reshape(n, -1).astype(np.float32), lit) / lit_area,
        "sharpness": _row_variance(lap.reshape(n, -1)),
    }


def _row_variance(v: np.ndarray) -> np.ndarray:
    d = v - v.mean(axis=1, keepdims=True)
    return np.einsum("ij,ij->i", d, d) / v.shape[1]


def normalise(features: np.ndarray) -> np.ndarray:
    """Features scaled to unit length: the distance then measures what the image looks like, not how
    strongly it activates the network (separated non-lesion images better than raw features)."""
    f = np.asarray(features, dtype=np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


_BLAS: list = []


def _one_blas_thread():
    """A context that keeps BLAS on one thread: for these small products a multi-threaded BLAS
    costs milliseconds when the cores are busy (e.g. with the engine's own threads)."""
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController  # ships with scikit-learn; pure Python

            _BLAS.append(ThreadpoolController())
        except Exception:  # noqa: BLE001 - without it the answers are the same, only slower
            _BLAS.append(None)
    if _BLAS[0] is None:
        from contextlib import nullcontext

        return nullcontext()
    return _BLAS[0].limit(limits=1, user_api="blas")


def mahalanobis(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each row of ``features`` to ``mean`` under ``precision``."""
    d = np.asarray(features, dtype=np.float32) - mean
    q = np.einsum("ij,ij->i", d @ precision, d)
    return np.sqrt(np.maximum(q, 0.0))


def read_statistics(data: bytes, feature_dim: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``mean`` (d,) and ``precision`` (d, d) from the bytes of ``quality.npz``, d = ``feature_dim``.

    Each array's shape and dtype are read from its .npy header, and the member's inflated size from
    the zip directory, before anything is decompressed: a small file that would inflate to gigabytes
    is refused, not loaded."""
    import io
    import zipfile

    expected = {"mean.npy": (feature_dim,), "precision.npy": (feature_dim, feature_dim)}
    out = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = {info.filename: info for info in zf.infolist()}
            for name, shape in expected.items():
                info = members.get(name)
                if info is None:
                    raise ModelLoadError(f"{where}: no {name[:-4]!r} array")
                limit = int(np.prod(shape)) * 8 + NPY_HEADER_SLACK
                if info.file_size > limit:
                    raise ModelLoadError(f"{where}: {name} would inflate to {info.file_size} bytes "
                                         f"(a ({', '.join(map(str, shape))}) array needs at most {limit})")
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read_header is None:
                        raise ModelLoadError(f"{where}: {name}: unsupported .npy version {version}")
                    got, fortran, dtype = read_header(f, max_header_size=NPY_HEADER_SLACK)
                    if tuple(got) != shape or dtype.kind != "f" or dtype.itemsize not in (4, 8) or dtype.hasobject:
                        raise ModelLoadError(f"{where}: {name} holds {dtype} {tuple(got)}; quality: feature_dim "
                                             f"{feature_dim} needs float {shape}")
                    array = np.empty(shape, dtype=dtype)  # bounded: the shape was checked above
                    buf = f.read(array.nbytes + 1)
                    if len(buf) != array.nbytes:
                        raise ModelLoadError(f"{where}: {name} is truncated or has trailing data")
                    flat = np.frombuffer(buf, dtype=dtype)
                    out[name[:-4]] = (flat.reshape(shape, order="F" if fortran else "C")).astype(np.float32)
    except ModelLoadError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ModelLoadError(f"{where}: not a readable quality-statistics file ({exc})") from exc
    mean, precision = out["mean"], out["precision"]
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(precision))):
        raise ModelLoadError(f"{where}: the statistics hold NaN or infinite values")
    return mean, precision


@dataclass(frozen=True, eq=False)
class QualityReport(Record):
    """What the gate found about one image, in one shape whether or not the gate ran.

    The defaults are the report of an image the gate did not look at (``checked`` False): accepted,
    no issues, no failed checks, and every measurement (``short_side`` to ``ood_threshold``) None.
    ``ood_score`` is also None when the distance was not finite. A read-only mapping, so code written
    for the dict form (``report["accepted"]``, ``report.get("issues")``, ``dict(report)``) still works."""

    accepted: bool = True
    issues: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)
    checked: bool = False
    short_side: int | None = None
    brightness: float | None = None
    contrast: float | None = None
    colourfulness: float | None = None
    sharpness: float | None = None
    ood_score: float | None = None
    ood_threshold: float | None = None


class QualityGate:
    """Thresholds plus feature statistics; ``assess`` answers one ``QualityReport`` per image."""

    def __init__(self, config: QualityConfig | dict, mean: np.ndarray, precision: np.ndarray):
        if not isinstance(config, QualityConfig):
            config = QualityConfig.from_dict(dict(config))
        self.config = config
        self.mean = np.asarray(mean, dtype=np.float32)
        self.precision = np.asarray(precision, dtype=np.float32)
        self.min_side = config.min_side
        self.brightness_min = config.brightness_min
        self.brightness_max = config.brightness_max
        self.contrast_min = config.contrast_min
        self.sharpness_min = config.sharpness_min
        self.colour_min = config.colour_min
        self.ood_max = config.ood_max
        self.stats_size = config.stats_size

    @classmethod
    def from_folder(cls, folder) -> "QualityGate":
        """The gate of an opened ``ModelFolder`` (the statistics' sha256 checked on the bytes read)."""
        q = folder.config.quality
        data = folder.read_verified(q.file)
        return cls(q, *read_statistics(data, q.feature_dim, f"{folder.path}: {q.file}"))

    def ood_scores(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features have shape {features.shape}; the gate expects (N, {self.mean.shape[0]})")
        return mahalanobis(normalise(features), self.mean, self.precision)

    def _stats_batch(self, batch: np.ndarray) -> np.ndarray:
        """The batch at the size the thresholds were fitted at (normally already so)."""
        s = self.stats_size
        if not s or (batch.shape[1] == s and batch.shape[2] == s):
            return batch
        from .images import to_model_input

        return np.stack([to_model_input(np.ascontiguousarray(b), s) for b in batch])

    def failed_checks(self, short_side, stats: dict, ood: np.ndarray) -> list[list[str]]:
        """For each image, the names of the checks it fails (in ``CHECK_ORDER``)."""
        flags = {
            "too_small": np.asarray(short_side) < self.min_side,
            "too_dark": stats["brightness"] < self.brightness_min,
            "too_bright": stats["brightness"] > self.brightness_max,
            "low_contrast": stats["contrast"] < self.contrast_min,
            "no_colour": stats["colourfulness"] < self.colour_min,
            "blurred": stats["sharpness"] < self.sharpness_min,
            "not_dermoscopy": ~(ood <= self.ood_max),  # NaN counts as out of distribution
        }
        n = len(ood)
        return [[c for c in CHECK_ORDER if flags[c][i]] for i in range(n)]

    def pixel_stats(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The pixel statistics of model inputs, as the thresholds were fitted. Needs no model
        output, so ``predict`` runs it beside the engine, on the core the engine leaves idle."""
        with _one_blas_thread():
            return pixel_stats(self._stats_batch(np.asarray(batch)))

    def assess(self, sizes, batch: np.ndarray, features: np.ndarray, stats: dict | None = None) -> list[QualityReport]:
        """One ``QualityReport`` per image: accepted, issues (plain language), checked, scores.

        ``sizes``: each original image's (width, height); ``batch``: the model inputs;
        ``features``: the engine's penultimate features for them; ``stats``: ``self.pixel_stats(batch)``
        if already computed."""
        batch = np.asarray(batch)
        if len(sizes) != len(batch) or len(batch) != len(features):
            raise ValueError("sizes, batch and features must hold the same number of images")
        if stats is None:
            stats = self.pixel_stats(batch)
        elif any(len(v) != len(batch) for v in stats.values()):
            raise ValueError("stats must hold one value per image")
        with _one_blas_thread():
            ood = self.ood_scores(features)
        sizes = [(int(w), int(h)) for w, h in sizes]
        failed = self.failed_checks([min(w, h) for w, h in sizes], stats, ood)
        out = []
        for i, checks in enumerate(failed):
            w, h = sizes[i]
            out.append(QualityReport(
                accepted=not checks,
                issues=[MESSAGES[c].format(w=w, h=h, min_side=self.min_side) for c in checks],
                failed_checks=checks,
                checked=True,
                short_side=min(w, h),
                brightness=round(float(stats["brightness"][i]), 3),
                contrast=round(float(stats["contrast"][i]), 3),
                colourfulness=round(float(stats["colourfulness"][i]), 3),
                sharpness=round(float(stats["sharpness"][i]), 3),
                ood_score=round(float(ood[i]), 4) if np.isfinite(ood[i]) else None,
                ood_threshold=round(self.ood_max, 4),
            ))
        return out


# ---------------------------------------------------------------------------------------------
# Fitting (training time only: imports scikit-learn and the data helpers lazily)


def capture_variations(pixels: np.ndarray, seed: int = 0) -> np.ndarray:
    """One plausibly different capture of each training image, so the reference distribution is not
    HAM10000's cameras alone: half get the black circular field of view of many contact
    dermatoscopes (radius 0.7-1.3 x half the side, centre jittered), a third are zoomed 1-1.5x, and
    all get a colour cast (per-channel gain 0.88-1.12) and an exposure change (x 0.75-1.2)."""
    rng = np.random.default_rng(seed)
    n, s = pixels.shape[0], pixels.shape[1]
    out = np.empty_like(pixels)
    from PIL import Image

    for i in range(n):
        img = pixels[i]
        if rng.random() < 1 / 3:
            c = int(round(s / rng.uniform(1.0, 1.5)))
            o = (s - c) // 2
            img = np.asarray(Image.fromarray(img[o:o + c, o:o + c]).resize((s, s), Image.BILINEAR))
        out[i] = img
    x = out.astype(np.float32)
    x *= rng.uniform(0.88, 1.12, (n, 1, 1, 3)) * rng.uniform(0.75, 1.2, (n, 1, 1, 1))
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    for i in np.flatnonzero(rng.random(n) < 0.5):
        cy, cx = (s / 2) * (1 + rng.uniform(-0.08, 0.08, 2))
        r = rng.uniform(0.7, 1.3) * s / 2
        x[i] *= ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None]
    return np.clip(x, 0, 255).astype(np.uint8)


def _features(engine, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    from .engines import run_in_batches

    return run_in_batches(engine, pixels, batch_size)[1].astype(np.float32)


def _short_sides(paths) -> np.ndarray:
    from PIL import Image

    sides = []
    for p in paths:
        with Image.open(p) as im:
            sides.append(min(im.size))
    return np.array(sides, dtype=np.float64)


def pixel_thresholds(stats: dict[str, np.ndarray], short_sides: np.ndarray, input_size: int) -> dict:
    """Thresholds from the training images' pixel statistics, with generous margins.

    Low-side limits are ``PIXEL_MARGIN`` x the training images' ``PIXEL_PERCENTILE``-th percentile
    (half-way from it to zero); the brightness ceiling is half-way from the high percentile to 255.
    The size floor is half the training images' 1st-percentile shorter side, and never above half
    the model input (the model would otherwise see a more than 2x upscaled image).
    """
    lo, hi = PIXEL_PERCENTILE, 100.0 - PIXEL_PERCENTILE
    b_lo, b_hi = np.percentile(stats["brightness"], [lo, hi])
    return {
        "min_side": int(max(16, min(PIXEL_MARGIN * np.percentile(short_sides, SIDE_PERCENTILE), input_size // 2))),
        "brightness_min": float(PIXEL_MARGIN * b_lo),
        "brightness_max": float(255.0 - PIXEL_MARGIN * (255.0 - b_hi)),
        "contrast_min": float(PIXEL_MARGIN * np.percentile(stats["contrast"], lo)),
        "sharpness_min": float(PIXEL_MARGIN * np.percentile(stats["sharpness"], lo)),
        "colour_min": float(PIXEL_MARGIN * np.percentile(stats["colourfulness"], lo)),
    }


def _summary(v: np.ndarray) -> dict:
    return {f"p{q:g}": round(float(np.percentile(v, q)), 3) for q in (0.5, 5, 50, 95, 99.5)}


def fit_quality_gate(model_folder, train_set, val_set, cache_dir=".cache", *, batch_size: int = 64,
                     log=print, pixels: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Fit the gate for the model in ``model_folder`` and record it there.

    Pixel thresholds come from ``train_set``; the feature mean and Ledoit-Wolf shrinkage precision
    from the penultimate features (the model's own engine) of ``train_set`` plus one
    ``capture_variations`` copy of each image; the distance threshold is the
    ``OOD_QUANTILE`` quantile of ``val_set``'s distances times ``OOD_MARGIN``. Writes ``quality.npz``
    and the config's ``quality`` entry (``ModelFolder.update``); returns that entry. ``pixels``: the sets' model inputs
    (train, val), when the caller already holds them (training does).
    """
    from sklearn.covariance import LedoitWolf

    from .data import load_pixels
    from .engines import make_engine
    from .model_folder import ModelFolder

    opened = ModelFolder.open(model_folder)  # every file checked; the gate being fitted is not loaded
    engine = make_engine(opened)
    folder = opened.path
    size = opened.config.input_size

    if pixels is None:
        pixels = load_pixels(train_set, size, cache_dir), load_pixels(val_set, size, cache_dir)
    x_train, x_val = pixels
    log(f"quality gate: features of {len(x_train)} train / {len(x_val)} val images")
    f_train = _features(engine, x_train, batch_size)
    f_val = _features(engine, x_val, batch_size)

    stats_train = pixel_stats(x_train)
    sides_train = _short_sides(train_set.paths)
    thresholds = pixel_thresholds(stats_train, sides_train, size)

    # The reference distribution: the training images plus one varied capture of each (other
    # dermatoscopes' black field of view, colour casts, exposure, zoom), so that dermoscopy from other
    # cameras is not flagged for looking unlike HAM10000's.
    f_var = _features(engine, capture_variations(x_train, seed=0), batch_size)
    lw = LedoitWolf(assume_centered=False).fit(normalise(np.concatenate([f_train, f_var])).astype(np.float64))
    mean = lw.location_.astype(np.float32)
    precision = lw.precision_.astype(np.float32)
    d_val = mahalanobis(normalise(f_val), mean, precision)
    d_val_var = mahalanobis(normalise(_features(engine, capture_variations(x_val, seed=1), batch_size)), mean, precision)
    ood_max = float(np.quantile(d_val, OOD_QUANTILE) * OOD_MARGIN)

    path = folder / QUALITY_FILE
    tmp = folder / f".{QUALITY_FILE}.tmp"
    with open(tmp, "wb") as f:  # a new file, then renamed: a hard-linked old copy is never written into
        np.savez(f, mean=mean, precision=precision)
    tmp.replace(path)
    entry = {
        "version": GATE_VERSION,
        "file": QUALITY_FILE,
        **thresholds,
        "ood_max": ood_max,
        "stats_size": size,
        "feature_dim": int(mean.shape[0]),
        "feature_transform": "l2-normalised penultimate features",
        "shrinkage": float(lw.shrinkage_),
        "rules": {
            "pixel": (f"training images' {PIXEL_PERCENTILE:g}th percentile (brightness also "
                      f"{100 - PIXEL_PERCENTILE:g}th) of each statistic on the {size}x{size} model input, "
                      f"moved {PIXEL_MARGIN:g} of the way to the extreme (0 or 255)"),
            "min_side": (f"{PIXEL_MARGIN:g} x the training images' {SIDE_PERCENTILE:g}st-percentile shorter side, "
                         "at most half the model input size"),
            "ood": (f"Mahalanobis distance of L2-normalised penultimate features to those of the training "
                    f"images and one capture variation of each (Ledoit-Wolf shrinkage covariance); threshold "
                    f"= {OOD_QUANTILE:g} quantile of validation distances x {OOD_MARGIN:g}"),
            "capture_variations": ("one copy of each training image: black circular field of view (half of "
                                   "them, radius 0.7-1.3 x half the side), zoom 1-1.5x (a third), per-channel "
                                   "gain 0.88-1.12, exposure x 0.75-1.2"),
        },
        "fitted_on": {"train": f"{train_set.source} ({len(train_set)} images)",
                      "val": f"{val_set.source} ({len(val_set)} images)"},
        "train_stats": {k: _summary(v) for k, v in stats_train.items()},
    }
    gate = QualityGate(entry, mean, precision)
    sides_val = _short_sides(val_set.paths)
    failed = gate.failed_checks(sides_val, pixel_stats(x_val), d_val)
    entry["val_accepted"] = round(float(np.mean([not f for f in failed])), 4)
    entry["val_ood_accepted"] = round(float(np.mean(d_val <= ood_max)), 4)
    entry["val_variations_ood_accepted"] = round(float(np.mean(d_val_var <= ood_max)), 4)
    opened.update(quality=entry, written=[QUALITY_FILE])
    log(f"quality gate: {entry['val_accepted']:.2%} of validation images accepted; wrote {path}")
    return entry
