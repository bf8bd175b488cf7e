"""load_model(): the bundled model, local folders, and every way a model folder can be unusable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import skinmole
from skinmole import ModelLoadError, load_model
from skinmole.model import BUNDLED_MODEL, CONFIG_FILE, REQUIRED_KEYS, SkinmoleModel, sha256_file
from skinmole.sample_images import sample_paths


@pytest.fixture(scope="module")
def bundled() -> SkinmoleModel:
    return skinmole.model.default_model()


@pytest.fixture
def copy(tmp_path) -> Path:
    """A private copy of the bundled model folder, to break."""
    return Path(shutil.copytree(BUNDLED_MODEL, tmp_path / "model"))


def _edit_config(folder: Path, change) -> None:
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    change(cfg)
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))


def test_the_bundled_model_loads_with_a_consistent_config(bundled):
    m = load_model()
    assert isinstance(m, SkinmoleModel) and m.folder == BUNDLED_MODEL
    assert set(REQUIRED_KEYS) <= set(m.config)
    assert m.input_size >= 32
    assert len(m.class_names) >= 1 and set(m.malignant_classes) <= set(m.class_names) | {"malignant"}
    assert 0.0 < m.threshold < 1.0 and m.temperature > 0
    weights = m.folder / m.config.get("weights_file", "model.keras")
    assert m.weights_sha256 == sha256_file(weights)
    assert m.config["threshold_rule"] and m.config["metrics"] and m.config["licence"]
    assert m.config == bundled.config


def test_the_bundled_keras_model_takes_raw_pixels_and_names_its_layers(bundled):
    km = bundled.keras_model
    assert tuple(km.input_shape[1:]) == (bundled.input_size, bundled.input_size, 3)
    names = {layer.name for layer in km.layers}
    assert {"last_conv", "features", "logits"} <= names
    n_out = km.output_shape[-1]
    assert n_out == len(bundled.class_names) or (n_out == 1 and len(bundled.class_names) <= 2)


def test_a_loaded_model_passes_through(bundled):
    assert load_model(bundled) is bundled


def test_load_from_a_folder_and_from_a_file_inside_it(bundled, copy):
    for source in (copy, str(copy), copy / CONFIG_FILE, str(copy / "model.keras")):
        m = load_model(source)
        assert m.folder == copy and m.config == bundled.config, source


def test_a_folder_copy_predicts_like_the_bundled_model(bundled, copy):
    paths = sample_paths()[:3]
    ours = [p.malignant_probability for p in skinmole.predict(paths, load_model(copy), check_quality=False)]
    ref = [p.malignant_probability for p in skinmole.predict(paths, bundled, check_quality=False)]
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)


def test_tampered_weights_are_refused(copy):
    weights = copy / "model.keras"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256") as info:
        load_model(copy)
    assert "model.keras" in str(info.value)


def test_a_wrong_recorded_sha256_is_refused(copy):
    _edit_config(copy, lambda c: c.update(weights_sha256="0" * 64))
    with pytest.raises(ModelLoadError, match="sha256"):
        load_model(copy)


def test_missing_weights_are_refused(copy):
    (copy / "model.keras").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_model(copy)


def test_a_tampered_onnx_file_is_refused(copy):
    (copy / "model.onnx").write_bytes(b"not the recorded onnx")
    _edit_config(copy, lambda c: c.update(onnx_file="model.onnx", onnx_sha256="0" * 64))
    with pytest.raises(ModelLoadError, match="sha256"):
        load_model(copy)


def test_a_folder_without_config_is_refused(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"weights")
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(tmp_path)


def test_a_file_in_a_folder_without_config_is_refused(tmp_path):
    (tmp_path / "mole.jpg").write_bytes(sample_paths()[0].read_bytes())
    with pytest.raises(ModelLoadError, match="not a skinmole model folder"):
        load_model(tmp_path / "mole.jpg")


@pytest.mark.parametrize("key", ["class_names", "threshold", "weights_sha256", "input_size"])
def test_a_config_missing_keys_is_refused(copy, key):
    _edit_config(copy, lambda c: c.pop(key))
    with pytest.raises(ModelLoadError, match=key):
        load_model(copy)


def test_a_config_that_is_not_json_is_refused(copy):
    (copy / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match="JSON"):
        load_model(copy)


def test_a_newer_format_is_refused(copy):
    _edit_config(copy, lambda c: c.update(format_version=99))
    with pytest.raises(ModelLoadError, match="format_version"):
        load_model(copy)


@pytest.mark.parametrize("source", ["/nonexistent/skinmole-model", "./no-such-model", "no/such/model/here",
                                    "~/no-such-skinmole-model", "just-a-name"])
def test_a_missing_path_that_is_not_a_repo_id_is_refused(source):
    with pytest.raises(ModelLoadError, match="no such model"):
        load_model(source)


def test_model_load_error_is_a_value_error():
    assert issubclass(ModelLoadError, ValueError)
