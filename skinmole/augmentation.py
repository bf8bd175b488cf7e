"""Training-time augmentation: geometry, colour, and what other cameras and clinics look like.

Why: the HAM10000 collections differ in camera, lighting and framing, and a model can learn those
instead of the lesion. ``standard`` is the original recipe (flips, rotation, zoom, mild colour);
``camera`` adds what another clinic's dermatoscope changes: white balance (per-channel gain), gamma,
stronger brightness / saturation, and the black circular field of view of contact dermatoscopes.
Active only while training; only the bare model is saved.
"""

from __future__ import annotations

AUGMENTATIONS = ("standard", "camera")


def _camera_layer():
    import keras
    from keras import ops

    class CameraShift(keras.layers.Layer):
        """Random white balance, gamma and a dark circular vignette (training only)."""

        def __init__(self, seed: int, gain: float = 0.25, gamma: float = 0.35, vignette: float = 0.3, **kwargs):
            super().__init__(**kwargs)
            self.gain, self.gamma, self.vignette = gain, gamma, vignette
            self.seed_gen = keras.random.SeedGenerator(seed)

        def call(self, x, training=None):
            if not training:
                return x
            n = ops.shape(x)[0]
            x = ops.cast(x, "float32") / 255.0
            g = ops.exp(keras.random.uniform((n, 1, 1, 3), -self.gain, self.gain, seed=self.seed_gen))
            gamma = ops.exp(keras.random.uniform((n, 1, 1, 1), -self.gamma, self.gamma, seed=self.seed_gen))
            x = ops.power(ops.clip(x * g, 1e-4, 1.0), gamma)
            # Circular field of view: for a share of the images, black outside a random radius.
            h, w = ops.shape(x)[1], ops.shape(x)[2]
            yy = (ops.cast(ops.arange(h), "float32")[:, None] + 0.5) / ops.cast(h, "float32") * 2.0 - 1.0
            xx = (ops.cast(ops.arange(w), "float32")[None, :] + 0.5) / ops.cast(w, "float32") * 2.0 - 1.0
            r = ops.sqrt(yy * yy + xx * xx)[None, :, :, None]
            radius = keras.random.uniform((n, 1, 1, 1), 0.85, 1.3, seed=self.seed_gen)
            use = ops.cast(keras.random.uniform((n, 1, 1, 1), 0.0, 1.0, seed=self.seed_gen) < self.vignette, "float32")
            inside = ops.sigmoid((radius - r) * 40.0)
            mask = use * inside + (1.0 - use)
            return x * mask * 255.0

        def compute_output_shape(self, input_shape):
            return input_shape

    return CameraShift


def augmentation(seed: int, kind: str = "standard"):
    """The augmentation block of the training graph for ``kind`` (see ``AUGMENTATIONS``)."""
    import keras
    from keras import layers

    if kind not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, not {kind!r}")
    strong = kind == "camera"
    steps = [
        layers.RandomFlip("horizontal_and_vertical", seed=seed),
        layers.RandomRotation(0.5, fill_mode="reflect", seed=seed + 1),
        layers.RandomZoom((-0.25, 0.1), fill_mode="reflect", seed=seed + 2),
        layers.RandomBrightness(0.25 if strong else 0.15, value_range=(0, 255), seed=seed + 3),
        layers.RandomContrast(0.3 if strong else 0.2, value_range=(0, 255), seed=seed + 4),
        layers.RandomSaturation((0.25, 0.75) if strong else (0.35, 0.65), value_range=(0, 255), seed=seed + 5),
        layers.RandomHue(0.06 if strong else 0.04, value_range=(0, 255), seed=seed + 6),
    ]
    if strong:
        steps.append(_camera_layer()(seed + 7, name="camera_shift"))
    return keras.Sequential(steps, name="augmentation")
