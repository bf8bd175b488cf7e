"""The exported ONNX file describes itself: class names, input size, threshold, temperature and the
malignant classes are in its metadata_props, as ONNX Runtime reads them, equal to the folder's config."""

from __future__ import annotations

import json

import pytest

from skinmole.model import BUNDLED_MODEL, read_config, save_model_folder

pytest.importorskip("onnx", reason="ONNX export needs the 'onnx' package (dev extra)")
ort = pytest.importorskip("onnxruntime", reason="reading the metadata needs onnxruntime")


def test_export_writes_the_config_into_the_onnx_metadata(tmp_path):
    from skinmole.architectures import build
    from skinmole.onnx_export import export_model_folder

    config = dict(read_config(BUNDLED_MODEL))
    for key in ("onnx_file", "onnx_sha256", "quality", "weights_file", "weights_sha256"):
        config.pop(key, None)
    config.update(architecture="simple-cnn", input_size=48, name="tiny-simple-cnn", threshold=0.3125,
                  temperature=1.5)
    keras_model = build("simple-cnn", 48, len(config["class_names"]))
    folder = save_model_folder(tmp_path / "tiny", keras_model, config)
    path = export_model_folder(folder, keras_model)

    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    written = read_config(folder)
    got = meta.custom_metadata_map
    assert json.loads(got["class_names"]) == written["class_names"]
    assert json.loads(got["malignant_classes"]) == written["malignant_classes"]
    assert json.loads(got["input_size"]) == written["input_size"] == 48
    assert json.loads(got["threshold"]) == written["threshold"] == 0.3125
    assert json.loads(got["temperature"]) == written["temperature"] == 1.5
    assert got["name"] == "tiny-simple-cnn" and got["architecture"] == "simple-cnn"
    assert "uint8" in got["input"] and "p = softmax(logits / temperature)" in got["outputs"]
    assert "Not a diagnostic device" in got["note"]
    assert meta.producer_name == "skinmole"
