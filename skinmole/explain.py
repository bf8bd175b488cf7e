"""Grad-CAM: which part of the image pushed the model towards "malignant", and whether any part did.

``explain`` runs the image through the same ``load_image`` -> ``to_model_input`` path as ``predict``
and differentiates the malignant score with respect to the ``last_conv`` feature map:

- multi-class head: the score is the log of the summed malignant-class probability, with the
  model's calibration temperature (``log sum_{c in malignant} softmax(logits / T)_c``), i.e. the log
  of the very probability ``predict`` reports;
- one-logit binary head: the score is the logit itself (monotone in the probability).

Each feature channel is weighted by its spatially averaged gradient and the weighted sum is passed
through ReLU (only evidence *for* malignant). Behind a global-average-pooling head this raw map has a
unit: each cell's value is its additive share of the (linearised) score. ``explain`` converts it to
a share of the malignant LOG-ODDS (divide by ``1 - P`` for log P, by the temperature for a raw
logit), because log P saturates near P = 1 while the log-odds do not.

A region "stands out" when its brightest cell alone multiplies the odds of malignant by at least
e^0.1 = 1.105 (``MIN_LOG_ODDS_SHARE = 0.1`` log-odds). The map is divided by ``max(peak, MIN_LOG_ODDS_SHARE)``, so a map
that stands out reaches 1 at its peak and a weak one stays faint: normalising a weak map by its own
maximum paints a saturated blob where nothing stood out (the bundled melanoma sample: peak share
0.006, in a border cell). Measured on 240 HAM10000 test images (120 malignant, 120 benign;
``experiments/gradcam_maps.py``, 2026-11-30): blurring the brightest quarter of the 81 maps that
stand out took 4.4 off the malignant log-odds on average (median 4.0), of the 159 weak ones 0.5
(median 0.3). About 6 in 10 malignant and 1 in 20 benign images have a map that stands out.

The map is input_size/32 cells wide (4x4 at 128 px). Finer maps from earlier layers were measured
and not adopted: blurring the top quarter of a map took log P(malignant) of 80 malignant test
images down by 2.13 on average with ``last_conv`` (4x4), 1.25 with ``block11_expand_relu6`` (8x8),
1.15 with ``block10_add`` (8x8) and 0.54 with ``block5_expand_relu6`` (16x16), against 0.07 for
random maps: the finer maps point less at what drove the answer. (A centred disc scores 2.82:
lesions sit mid-image.) It is a coarse hint about where the model looked, not a segmentation and
not a reason to trust a prediction.

TensorFlow is imported only when ``explain`` is called, so ``import skinmole`` stays light.
"""

from __future__ import annotations

import weakref

import numpy as np
from PIL import Image

from .extras import require
from .images import load_image, load_model_input
from .model import SkinmoleModel, load_model

CONV_LAYER = "last_conv"
LOGITS_LAYER = "logits"
# The brightest cell must move the odds of malignant by at least this much (log-odds, 0.1 = x1.105)
# for the map to count as pointing somewhere; see the module docstring for the measurement.
MIN_LOG_ODDS_SHARE = 0.1
OVERLAY_ROWS = 256  # overlay() blends this many rows at a time: memory stays flat for any image size

_GRAD_MODELS: "weakref.WeakKeyDictionary[SkinmoleModel, object]" = weakref.WeakKeyDictionary()
_CAM_FUNCTIONS: "weakref.WeakKeyDictionary[SkinmoleModel, object]" = weakref.WeakKeyDictionary()


class Heatmap(np.ndarray):
    """A Grad-CAM map: a float32 (H, W) array in 0..1 that also says whether any region stood out.

    ``stands_out``: the brightest cell moved the malignant log-odds by at least
    ``MIN_LOG_ODDS_SHARE``; when False, say "no region stands out" rather than draw the map.
    ``peak_log_odds``: that brightest cell's share of the malignant log-odds.
    Being an ndarray, it works wherever the plain heatmap did (``overlay``, numpy, matplotlib).
    """

    stands_out: bool
    peak_log_odds: float

    def __new__(cls, values: np.ndarray, stands_out: bool, peak_log_odds: float) -> "Heatmap":
        heat = np.asarray(values, dtype=np.float32).view(cls)
        heat.stands_out = bool(stands_out)
        heat.peak_log_odds = float(peak_log_odds)
        return heat

    def __array_finalize__(self, obj) -> None:
        self.stands_out = getattr(obj, "stands_out", False)
        self.peak_log_odds = getattr(obj, "peak_log_odds", 0.0)


def _grad_model(model: SkinmoleModel):
    """A Keras model exposing (last_conv, logits), built once per loaded model."""
    sub = _GRAD_MODELS.get(model)
    if sub is None:
        import keras

        km = model.keras_model
        sub = keras.Model(km.input, [km.get_layer(CONV_LAYER).output, km.get_layer(LOGITS_LAYER).output])
        _GRAD_MODELS[model] = sub
    return sub


def _score(logits, temperature: float, malignant_index: list[int]):
    """The differentiated target: the logit of a one-output head, else log P(malignant)."""
    import tensorflow as tf

    if logits.shape[-1] == 1:
        return logits[:, 0]
    z = logits / temperature
    z_mal = tf.gather(z, malignant_index, axis=-1)
    return tf.reduce_logsumexp(z_mal, axis=-1) - tf.reduce_logsumexp(z, axis=-1)


def _malignant_score(logits, model: SkinmoleModel):
    return _score(logits, model.temperature, [model.class_names.index(c) for c in model.malignant_classes])


def _cam_function(model: SkinmoleModel):
    """A compiled ``tf.function``: batch of model inputs -> (Grad-CAM maps at feature resolution,
    the differentiated scores).

    Graph mode makes Grad-CAM about as fast as a forward and backward pass; eager execution of the
    same steps is over ten times slower. Built (and traced) once per loaded model.
    """
    fn = _CAM_FUNCTIONS.get(model)
    if fn is None:
        import tensorflow as tf

        sub = _grad_model(model)
        # Plain values only: a closure over ``model`` would keep it alive in the weak-keyed cache.
        temperature = model.temperature
        malignant_index = [model.class_names.index(c) for c in model.malignant_classes]
        spec = tf.TensorSpec([None, model.input_size, model.input_size, 3], tf.float32)

        @tf.function(input_signature=[spec])
        def fn(x):
            with tf.GradientTape() as tape:
                conv, logits = sub(x, training=False)
                score = _score(logits, temperature, malignant_index)
            grads = tape.gradient(score, conv)
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # (N, 1, 1, C)
            return tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1)), score  # (N, h, w), (N,)

        _CAM_FUNCTIONS[model] = fn
    return fn


def _log_odds_map(model_input: np.ndarray, model: SkinmoleModel) -> np.ndarray:
    """Each feature cell's share of the malignant log-odds, float32 >= 0 at feature resolution."""
    cam, score = _cam_function(model)(model_input[None].astype(np.float32))
    cam = np.nan_to_num(np.asarray(cam[0], dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    score = float(np.asarray(score)[0])
    if _grad_model(model).outputs[1].shape[-1] == 1:
        per_score = 1.0 / model.temperature  # the score is the raw logit; log-odds = logit / T
    else:
        p = float(np.exp(min(score, 0.0)))  # the score is log P(malignant)
        per_score = 1.0 / max(1.0 - p, 1e-6)  # d log-odds / d log P
    return cam * np.float32(per_score)


def explain(image, model=None, *, size: tuple[int, int] | None = None) -> Heatmap:
    """Grad-CAM heatmap for one image: a ``Heatmap`` (float32 array, values 0..1) of the ORIGINAL
    image's (H, W), or of ``size`` = (width, height) when given (the demo asks for its display size,
    so a huge upload never gets a full-resolution map). ``heatmap.stands_out`` says whether any
    region moved the answer enough to be shown (see the module docstring).

    ``image``: anything ``load_image`` accepts (path, bytes, binary file, PIL image, array); bad
    input raises ``InvalidImageError``. ``model``: a loaded model or any ``load_model`` source; None
    uses the bundled default. Needs TensorFlow and Keras (``pip install 'skinmole[keras]'``).
    """
    require("keras", "Grad-CAM (skinmole.explain)")
    m = load_model(model)
    model_input, original = load_model_input(image, m.input_size)
    w, h = original if size is None else (int(size[0]), int(size[1]))
    if w < 1 or h < 1:
        raise ValueError(f"size must be a positive (width, height), got {size}")
    share = _log_odds_map(model_input, m)
    peak = float(share.max()) if share.size else 0.0
    scaled = share / np.float32(max(peak, MIN_LOG_ODDS_SHARE))
    resized = Image.fromarray(scaled.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR)
    return Heatmap(np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0), peak >= MIN_LOG_ODDS_SHARE, peak)


def _colour_table(colormap: str) -> np.ndarray:
    """A 256-entry RGB uint8 lookup table for a matplotlib colormap."""
    from matplotlib import colormaps

    return np.rint(colormaps[colormap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.uint8)


def overlay(image_rgb, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "viridis") -> np.ndarray:
    """Blend a heatmap (H, W, values 0..1) over an image as RGB uint8 of the image's shape.

    ``image_rgb``: an RGB array or anything ``load_image`` accepts. ``alpha`` is the heatmap's
    weight (0 = image only, 1 = heatmap only). The heatmap must have the image's height and width
    (``explain`` returns exactly that). ``colormap``: a matplotlib name; the default, viridis, is
    perceptually uniform and readable with colour-blindness (dark blue = nothing, yellow = most).
    Works in row blocks through a uint8 lookup table, so memory stays a few MB beyond the image.
    """
    rgb = load_image(image_rgb)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heatmap shape {heat.shape} does not match the image's {rgb.shape[:2]}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be within 0..1, got {alpha}")
    table = _colour_table(colormap)
    a = np.float32(alpha)
    out = np.empty_like(rgb)
    for top in range(0, rgb.shape[0], OVERLAY_ROWS):
        rows = slice(top, top + OVERLAY_ROWS)
        index = np.rint(np.clip(np.nan_to_num(heat[rows], nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
        blended = (1.0 - a) * rgb[rows].astype(np.float32) + a * table[index].astype(np.float32)
        out[rows] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out
