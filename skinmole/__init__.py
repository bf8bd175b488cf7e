"""skinmole: how much does a dermoscopic image of a mole resemble malignant lesions?

Not a diagnostic device: a probability is how much an image resembles the malignant lesions of the
training data. See MODEL_CARD.md for what the numbers mean and where they come from.
"""

__version__ = "0.1.0"

from . import privacy  # noqa: E402,F401  (first: telemetry off before any dependency loads)
from .errors import InvalidImageError, ModelLoadError  # noqa: E402
from .images import load_image, to_model_input  # noqa: E402
from .model import SkinmoleModel, load_model  # noqa: E402
from .predict import ModelInfo, Prediction, iter_predict, predict  # noqa: E402
from .quality import QualityReport  # noqa: E402
from .explain import explain, overlay  # noqa: E402  (TensorFlow only imported when explain() runs)

__all__ = [
    "InvalidImageError", "ModelInfo", "ModelLoadError", "Prediction", "QualityReport", "SkinmoleModel", "__version__",
    "explain", "iter_predict", "load_image", "load_model", "overlay", "predict", "to_model_input",
]
