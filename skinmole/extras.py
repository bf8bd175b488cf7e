"""Which optional dependencies (pip extras) a feature needs, checked before it starts.

The core install is what serving needs (numpy, pillow, onnxruntime, huggingface-hub, matplotlib).
Grad-CAM, the Keras engine, training, evaluation and the demo need more; asking for them by extra
name turns "No module named 'tensorflow'" deep inside a run into one line that says what to install.
The check looks modules up without importing them, so it costs nothing when they are there.
"""

from __future__ import annotations

import importlib.util

from .errors import MissingExtraError

# extra -> the top-level modules it provides (pyproject.toml's [project.optional-dependencies]).
EXTRAS = {
    "keras": ("keras", "tensorflow"),
    "evaluate": ("sklearn",),
    "train": ("keras", "tensorflow", "sklearn", "onnx"),
    "demo": ("gradio",),
    "scale": ("ray", "pyarrow"),
}


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be found."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken install counts as missing
            found = False
        if not found:
            missing.append(module)
    return missing


def require(extra: str, feature: str) -> None:
    """Raise ``MissingExtraError`` naming ``pip install 'skinmole[EXTRA]'`` if ``feature`` cannot run."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(f"{feature} needs {' and '.join(missing)}, not installed here: "
                                f"pip install 'skinmole[{extra}]'")
