"""Grad-CAM: which part of the image pushed the model towards "malignant".

``explain`` runs the image through the same ``load_image`` -> ``to_model_input`` path as ``predict``
and differentiates the malignant score with respect to the ``last_conv`` feature map:

- multi-class head: the score is the log of the summed malignant-class probability, with the
  model's calibration temperature (``log sum_{c in malignant} softmax(logits / T)_c``), i.e. the log
  of the very probability ``predict`` reports;
- one-logit binary head: the score is the logit itself (monotone in the probability).

Each feature channel is weighted by its spatially averaged gradient; the weighted sum is passed
through ReLU (only evidence *for* malignant), scaled to 0..1 and resized (bilinear) to the original
image's height and width. An all-zero map means no region increased the malignant score. It is a
coarse picture (the feature map is input_size/32 cells wide), a hint about what the model looked
at, not a segmentation and not a reason to trust a prediction.

TensorFlow is imported only when ``explain`` is called, so ``import skinmole`` stays light.
"""

from __future__ import annotations

import weakref

import numpy as np
from PIL import Image

from .images import load_image, load_model_input
from .model import SkinmoleModel, resolve_model

CONV_LAYER = "last_conv"
LOGITS_LAYER = "logits"

_GRAD_MODELS: "weakref.WeakKeyDictionary[SkinmoleModel, object]" = weakref.WeakKeyDictionary()
_CAM_FUNCTIONS: "weakref.WeakKeyDictionary[SkinmoleModel, object]" = weakref.WeakKeyDictionary()


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
    """A compiled ``tf.function``: batch of model inputs -> Grad-CAM maps at feature resolution.

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
            return tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1))  # (N, h, w)

        _CAM_FUNCTIONS[model] = fn
    return fn


def _cam(model_input: np.ndarray, model: SkinmoleModel) -> np.ndarray:
    """The Grad-CAM map at the feature map's resolution, float32 >= 0 (not yet scaled)."""
    x = model_input[None].astype(np.float32)
    return np.asarray(_cam_function(model)(x)[0], dtype=np.float32)


def explain(image, model=None) -> np.ndarray:
    """Grad-CAM heatmap for one image: float32 array of the ORIGINAL image's (H, W), values in 0..1.

    ``image``: anything ``load_image`` accepts (path, bytes, binary file, PIL image, array); bad
    input raises ``InvalidImageError``. ``model``: a loaded model or any ``load_model`` source; None
    uses the bundled default. See the module docstring for what is differentiated.
    """
    m = resolve_model(model)
    model_input, (w, h) = load_model_input(image, m.input_size)
    cam = _cam(model_input, m)
    cam = np.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(cam.max()) if cam.size else 0.0
    if top > 0:
        cam = cam / top
    else:
        cam = np.zeros_like(cam)
    resized = Image.fromarray(cam.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def overlay(image_rgb, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """Blend a heatmap (H, W, values 0..1) over an image as RGB uint8 of the image's shape.

    ``image_rgb``: an RGB array or anything ``load_image`` accepts. ``alpha`` is the heatmap's
    weight (0 = image only, 1 = heatmap only). The heatmap must have the image's height and width
    (``explain`` returns exactly that).
    """
    from matplotlib import colormaps

    rgb = load_image(image_rgb)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heatmap shape {heat.shape} does not match the image's {rgb.shape[:2]}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be within 0..1, got {alpha}")
    heat = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)
    colour = colormaps[colormap](heat)[..., :3] * 255.0
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colour
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
