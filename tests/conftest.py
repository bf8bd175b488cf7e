"""Fixtures every test file may use: the bundled model loaded once, and a tiny model folder built once.

Tests that break or edit a model folder work on ``copy_model_folder`` copies (weights hard-linked,
configs copied) of ``tiny_folder`` (an untrained 48 px simple-cnn with an ONNX file and a quality
gate, a few hundred KB) or, when they need the real model's answers, of the bundled folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import skinmole
from skinmole.model import BUNDLED_MODEL

from helpers import copy_model_folder

TINY_SIZE = 48


@pytest.fixture(scope="session")
def bundled():
    """The bundled default model, as ``predict(model=None)`` uses it (loaded once per process)."""
    return skinmole.load_model()


def _randomise_batchnorm(model, seed=0):
    """Untrained BN layers are identities; give them statistics so that folding them is tested."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            shape = layer.moving_mean.shape
            layer.set_weights([rng.uniform(0.5, 1.5, shape).astype("f4"), rng.normal(0, 0.2, shape).astype("f4"),
                               rng.normal(0, 0.2, shape).astype("f4"), rng.uniform(0.5, 2.0, shape).astype("f4")])


def tiny_config() -> dict:
    """The bundled model's config, for an untrained 48 px simple-cnn (files and gate left out)."""
    config = skinmole.model.read_config(BUNDLED_MODEL)
    for key in ("weights_files", "sha256", "onnx_file", "quality", "weights_file", "weights_sha256", "onnx_sha256"):
        config.pop(key, None)
    config.update(architecture="simple-cnn", input_size=TINY_SIZE, name="tiny-simple-cnn")
    return config


@pytest.fixture(scope="session")
def tiny_keras_model():
    from skinmole.architectures import build

    km = build("simple-cnn", TINY_SIZE, 7)
    _randomise_batchnorm(km)
    return km


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tiny_keras_model) -> Path:
    """A tiny model folder in the current layout: Keras weights, ``model.onnx`` and a quality gate
    (an identity-precision Mahalanobis gate: its numbers are not fitted, its files are real)."""
    pytest.importorskip("onnx", reason="the ONNX export needs the 'onnx' package (dev extra)")
    from skinmole.model_folder import ModelFolder
    from skinmole.onnx_export import export_model_folder

    path = tmp_path_factory.mktemp("tiny") / "tiny"
    ModelFolder.create(path, tiny_keras_model, tiny_config())
    export_model_folder(path, tiny_keras_model)
    d = int(tiny_keras_model.get_layer("features").output.shape[-1])
    np.savez(path / "quality.npz", mean=np.zeros(d, np.float32), precision=np.eye(d, dtype=np.float32))
    gate = dict(skinmole.model.read_config(BUNDLED_MODEL)["quality"], feature_dim=d, stats_size=TINY_SIZE,
                min_side=16, ood_max=1e6)
    ModelFolder.open(path, verify=False).update(quality=gate, written=["quality.npz"])
    return path


@pytest.fixture
def tiny_copy(tiny_folder, tmp_path) -> Path:
    """A private copy of the tiny model folder, to break."""
    return copy_model_folder(tiny_folder, tmp_path / "tiny")


@pytest.fixture
def bundled_copy(tmp_path) -> Path:
    """A private copy of the bundled model folder (weights hard-linked), to edit."""
    return copy_model_folder(BUNDLED_MODEL, tmp_path / "model")
