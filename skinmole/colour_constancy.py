"""Shades-of-Gray colour constancy as a Keras layer, so training, Keras serving and ONNX agree.

Why: a model that sees each clinic's camera and lighting as a colour cast can learn the clinic
instead of the lesion. Shades of Gray (Finlayson & Trezzi, 2004) estimates the illuminant of each
image as the Minkowski p-norm mean of each channel and divides it out, so every image is seen
under the same neutral light. It is part of the model graph (before the rescaling): the same
arithmetic runs in training, in ``keras_model`` and in ``model.onnx`` (``onnx_export`` converts it).
"""

from __future__ import annotations

import keras
from keras import ops

SHADES_OF_GRAY_P = 6.0


@keras.saving.register_keras_serializable(package="skinmole")
class ShadesOfGray(keras.layers.Layer):
    """RGB pixels 0..255 in, illuminant-normalised pixels 0..255 out.

    Each channel c is scaled by mean(e) / e_c, where e_c = mean(x_c ** p) ** (1/p): the grey-world
    (p=1) to max-RGB (p=inf) family; p=6 is the usual choice for dermoscopy.
    """

    def __init__(self, p: float = SHADES_OF_GRAY_P, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.p = float(p)
        self.epsilon = float(epsilon)

    def call(self, x):
        x = ops.cast(x, "float32")
        unit = x / 255.0
        e = ops.power(ops.mean(ops.power(unit, self.p), axis=(1, 2), keepdims=True) + self.epsilon, 1.0 / self.p)
        gain = ops.mean(e, axis=-1, keepdims=True) / e
        return ops.clip(x * gain, 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "p": self.p, "epsilon": self.epsilon}
