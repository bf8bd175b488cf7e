"""load_model() and the model folder: the bundled model, local folders in both layouts, the typed
config's validation, the sha256 of every file loaded, the one writer, and the head's arithmetic."""

from __future__ import annotations

import io
import json
import math
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import skinmole
from skinmole import ModelLoadError, load_model
from skinmole.config import KERAS_DIR_FILES, ModelConfig
from skinmole.head import Head, label_at
from skinmole.model import BUNDLED_MODEL, SkinmoleModel
from skinmole.model_folder import ModelFolder, sha256_file
from skinmole.sample_images import sample_paths

from helpers import config_path, copy_model_folder, edit_config, replace_file, tamper

TINY_FILES = (*KERAS_DIR_FILES, "model.onnx", "quality.npz")


def _pixels(size: int, n: int = 6) -> np.ndarray:
    from skinmole.images import load_image, to_model_input

    return np.stack([to_model_input(load_image(p), size) for p in sample_paths()[:n]])


# ------------------------------------------------------------------ the bundled model


def test_the_bundled_model_loads_with_a_consistent_config(bundled):
    m = load_model()
    assert m is bundled and isinstance(m, SkinmoleModel) and m.folder == BUNDLED_MODEL
    s = m.spec
    assert s.input_size >= 32 and not s.binary and s.n_logits == len(s.class_names) == 7
    assert set(s.malignant_classes) < set(s.class_names)
    assert 0.0 < s.threshold < 1.0 and s.temperature > 0
    for name in s.files:
        assert s.sha256[name] == sha256_file(m.folder / name), name
    assert m.config["threshold_rule"] and m.config["metrics"] and m.config["licence"]
    assert m.engine.name == "onnx" and m.quality_gate is not None


def test_the_bundled_keras_model_takes_raw_pixels_and_names_its_layers(bundled):
    km = bundled.keras_model
    assert tuple(km.input_shape[1:]) == (bundled.input_size, bundled.input_size, 3)
    assert {"last_conv", "features", "logits"} <= {layer.name for layer in km.layers}
    assert km.output_shape[-1] == bundled.spec.n_logits


def test_a_loaded_model_passes_through(bundled):
    assert load_model(bundled) is bundled


def test_load_from_a_folder_and_from_a_file_inside_it(bundled, bundled_copy):
    for source in (bundled_copy, str(bundled_copy), config_path(bundled_copy), str(bundled_copy / "model.onnx")):
        m = load_model(source)
        assert m.folder == bundled_copy and m.spec == bundled.spec, source


def test_a_folder_copy_predicts_like_the_bundled_model(bundled, bundled_copy):
    paths = sample_paths()[:3]
    ours = [p.malignant_probability for p in skinmole.predict(paths, load_model(bundled_copy), check_quality=False)]
    ref = [p.malignant_probability for p in skinmole.predict(paths, bundled, check_quality=False)]
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)


# ------------------------------------------------------------------ every file loaded is a file hashed


@pytest.mark.parametrize("name", TINY_FILES)
def test_a_changed_file_is_refused_without_printing_its_digest(tiny_copy, name):
    tamper(tiny_copy / name)
    with pytest.raises(ModelLoadError, match=f"sha256 of {name}") as info:
        load_model(tiny_copy)
    assert sha256_file(tiny_copy / name) not in str(info.value)


@pytest.mark.parametrize("name", TINY_FILES)
def test_a_missing_file_is_refused(tiny_copy, name):
    (tiny_copy / name).unlink()
    with pytest.raises(ModelLoadError, match=f"{name} is missing"):
        load_model(tiny_copy)


def test_swapped_keras_weights_are_refused_by_the_keras_engine_too(tiny_copy, tiny_keras_model, tmp_path):
    """A valid weights file of another model (not a corrupted one) in place of the recorded one."""
    import keras

    other = keras.models.clone_model(tiny_keras_model)
    other.save(str(tmp_path / "other"), zipped=False)
    replace_file(tiny_copy / "model.weights.h5", (tmp_path / "other" / "model.weights.h5").read_bytes())
    for engine in ("keras", "onnx", "auto"):
        with pytest.raises(ModelLoadError, match="sha256 of model.weights.h5"):
            load_model(tiny_copy, engine=engine)


def test_a_file_swapped_after_the_check_is_refused_at_read(tiny_copy):
    folder = ModelFolder.open(tiny_copy)  # checked here ...
    tamper(tiny_copy / "model.weights.h5")  # ... swapped before Keras reads it
    with pytest.raises(ModelLoadError, match="sha256 of model.weights.h5"):
        folder.keras_model()


def test_a_wrong_recorded_sha256_is_refused(tiny_copy):
    edit_config(tiny_copy, lambda c: c["sha256"].update({"model.onnx": "0" * 64}))
    with pytest.raises(ModelLoadError, match="sha256 of model.onnx"):
        load_model(tiny_copy)


# ------------------------------------------------------------------ both layouts


def test_keras_reads_the_folder_itself_with_the_same_logits(tiny_folder):
    import keras

    model = load_model(tiny_folder, engine="keras")
    x = _pixels(model.input_size)
    ours = model.keras_model.predict_on_batch(x.astype(np.float32))
    theirs = keras.saving.load_model(str(tiny_folder), compile=False).predict_on_batch(x.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    logits, _ = model.engine.run(x)
    onnx_logits, _ = load_model(tiny_folder, engine="onnx").engine.run(x)
    assert np.abs(np.asarray(ours) - onnx_logits).max() <= 1e-4 and np.abs(logits).max() > 0


HF_LOAD = """
import sys
import numpy as np
import keras
import skinmole
x = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 3)).astype("float32")
ours = skinmole.load_model("org/tiny", engine="keras").keras_model.predict_on_batch(x)
theirs = keras.saving.load_model("hf://org/tiny", compile=False).predict_on_batch(x)
print(float(np.abs(np.asarray(ours) - np.asarray(theirs)).max()), float(np.abs(np.asarray(ours)).max()))
"""


def test_a_published_copy_loads_in_keras_as_hf_and_in_skinmole_as_a_repo_id(tiny_folder, tmp_path):
    import os
    import subprocess
    import sys

    from hfcache import populate_cache

    cache = tmp_path / "hf-cache"
    populate_cache(cache, "org/tiny", tiny_folder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_TOKEN": ""}
    res = subprocess.run([sys.executable, "-c", HF_LOAD], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    diff, scale = map(float, res.stdout.split()[-2:])
    assert diff == 0.0 and scale > 0


def _legacy_folder(tiny_folder, tiny_keras_model, dest: Path) -> Path:
    """The tiny model in format 1: skinmole's config.json beside model.keras."""
    dest.mkdir()
    tiny_keras_model.save(dest / "model.keras")
    for name in ("model.onnx", "quality.npz"):
        (dest / name).write_bytes((tiny_folder / name).read_bytes())
    config = json.loads((tiny_folder / "skinmole.json").read_text())
    sha = config.pop("sha256")
    config.pop("weights_files")
    config.update(format_version=1, weights_file="model.keras", weights_sha256=sha256_file(dest / "model.keras"),
                  onnx_sha256=sha["model.onnx"])
    config["quality"]["sha256"] = sha["quality.npz"]
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_the_format_1_layout_loads_and_its_first_update_moves_it_to_skinmole_json(tiny_folder, tiny_keras_model, tmp_path):
    legacy = _legacy_folder(tiny_folder, tiny_keras_model, tmp_path / "legacy")
    x = _pixels(48)
    new = load_model(tiny_folder, engine="keras").engine.run(x)[0]
    old = load_model(legacy, engine="keras")
    assert old.spec.weights_files == ("model.keras",) and old.spec.format_version == 1
    np.testing.assert_array_equal(old.engine.run(x)[0], new)
    ModelFolder.open(legacy).update(metrics={"val": {"n": 3}})
    assert (legacy / "skinmole.json").is_file() and not (legacy / "config.json").exists()
    again = load_model(legacy)
    assert again.spec.metrics == {"val": {"n": 3}} and again.spec.weights_files == ("model.keras",)


def test_format_1_loads_model_keras_only_and_checks_it(tiny_folder, tiny_keras_model, tmp_path):
    legacy = _legacy_folder(tiny_folder, tiny_keras_model, tmp_path / "legacy")
    tamper(legacy / "model.keras")
    with pytest.raises(ModelLoadError, match="sha256 of model.keras"):
        load_model(legacy, engine="keras")
    edit_config(legacy, lambda c: c.update(weights_file="other.keras"))
    with pytest.raises(ModelLoadError, match="weights_file"):
        load_model(legacy)


def test_a_keras_folder_without_skinmole_json_is_not_a_skinmole_folder(tiny_copy):
    (tiny_copy / "skinmole.json").unlink()
    with pytest.raises(ModelLoadError, match="not a skinmole model folder"):
        load_model(tiny_copy)


def test_a_folder_without_config_is_refused(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"weights")
    with pytest.raises(ModelLoadError, match="not a skinmole model folder"):
        load_model(tmp_path)


def test_a_file_in_a_folder_without_config_is_refused(tmp_path):
    (tmp_path / "mole.jpg").write_bytes(sample_paths()[0].read_bytes())
    with pytest.raises(ModelLoadError, match="not a skinmole model folder"):
        load_model(tmp_path / "mole.jpg")


@pytest.mark.parametrize("source", ["/nonexistent/skinmole-model", "./no-such-model", "no/such/model/here",
                                    "~/no-such-skinmole-model", "just-a-name"])
def test_a_missing_path_that_is_not_a_repo_id_is_refused(source):
    with pytest.raises(ModelLoadError, match="no such model"):
        load_model(source)


# ------------------------------------------------------------------ every value validated at load

NAN = float("nan")


def _set(key, value):
    return lambda c: c.update({key: value})


def _set_quality(key, value):
    return lambda c: c["quality"].update({key: value})


def _rename_onnx(name):
    def change(c):
        c["onnx_file"] = name
        c["sha256"][name] = c["sha256"].pop("model.onnx")
    return change


INVALID = {
    "temperature 0": (_set("temperature", 0), "temperature"),
    "temperature negative": (_set("temperature", -1.2), "temperature"),
    "temperature NaN": (_set("temperature", NAN), "temperature"),
    "temperature infinite": (_set("temperature", math.inf), "temperature"),
    "temperature a string": (_set("temperature", "1.2"), "temperature"),
    "threshold NaN": (_set("threshold", NAN), "threshold"),
    "threshold 1.5": (_set("threshold", 1.5), "threshold"),
    "threshold negative": (_set("threshold", -0.1), "threshold"),
    "threshold null": (_set("threshold", None), "threshold"),
    "input_size 20000": (_set("input_size", 20000), "input_size"),
    "input_size 8": (_set("input_size", 8), "input_size"),
    "input_size fractional": (_set("input_size", 48.5), "input_size"),
    "input_size true": (_set("input_size", True), "input_size"),
    "input_size not the ONNX input": (_set("input_size", 64), "input_size"),
    "class_names empty": (_set("class_names", []), "class_names"),
    "class_names repeated": (_set("class_names", ["akiec", "akiec", "bkl", "df", "mel", "nv", "vasc"]), "class_names"),
    "class_names not strings": (_set("class_names", [1, 2, 3, 4, 5, 6, 7]), "class_names"),
    "class_names fewer than the logits": (_set("class_names", ["akiec", "bcc", "mel", "nv"]), "class_names"),
    "malignant_classes unknown": (_set("malignant_classes", ["melanoma"]), "malignant_classes"),
    "malignant_classes all": (_set("malignant_classes", ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]),
                              "malignant_classes"),
    "format_version 99": (_set("format_version", 99), "format_version"),
    "onnx_file absolute": (_rename_onnx("/etc/passwd"), "onnx_file"),
    "onnx_file with ..": (_rename_onnx("../model.onnx"), "onnx_file"),
    "onnx_file in a subfolder": (_rename_onnx("sub/model.onnx"), "onnx_file"),
    "weights_files outside": (_set("weights_files", ["../config.json", "metadata.json", "model.weights.h5"]),
                              "weights_files"),
    "sha256 not hex": (lambda c: c["sha256"].update({"model.onnx": "xyz"}), "sha256"),
    "sha256 missing a file": (lambda c: c["sha256"].pop("quality.npz"), "sha256"),
    "quality file with ..": (_set_quality("file", "../quality.npz"), "quality: file"),
    "quality feature_dim 0": (_set_quality("feature_dim", 0), "feature_dim"),
    "quality feature_dim not the model's": (_set_quality("feature_dim", 64), "feature_dim"),
    "quality ood_max NaN": (_set_quality("ood_max", NAN), "ood_max"),
    "quality min_side missing": (lambda c: c["quality"].pop("min_side"), "min_side"),
}


@pytest.mark.parametrize("engine", ["auto", "keras"])
@pytest.mark.parametrize("case", sorted(INVALID))
def test_every_value_is_validated_at_load_naming_the_field(tiny_copy, case, engine):
    change, field = INVALID[case]
    edit_config(tiny_copy, change)
    with pytest.raises(ModelLoadError) as info:
        load_model(tiny_copy, engine=engine)
    assert field in str(info.value).replace(str(tiny_copy), "<folder>"), info.value


def _peak_bytes_of_a_refused_load(folder, match: str) -> int:
    """Python's peak allocation while ``load_model(folder)`` fails with a ModelLoadError matching ``match``."""
    tracemalloc.start()
    try:
        with pytest.raises(ModelLoadError, match=match):
            load_model(folder)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_an_absurd_input_size_is_refused_before_anything_is_allocated(tiny_copy):
    edit_config(tiny_copy, _set("input_size", 20000))
    assert _peak_bytes_of_a_refused_load(tiny_copy, "input_size") < 16 * 1024 * 1024


def test_a_config_that_is_not_json_is_refused(tiny_copy):
    replace_file(tiny_copy / "skinmole.json", b"{not json")
    with pytest.raises(ModelLoadError, match="JSON"):
        load_model(tiny_copy)


@pytest.mark.parametrize("key", ["class_names", "threshold", "sha256", "input_size", "temperature"])
def test_a_config_missing_keys_is_refused(tiny_copy, key):
    edit_config(tiny_copy, lambda c: c.pop(key))
    with pytest.raises(ModelLoadError, match=key):
        load_model(tiny_copy)


def _npz_member(zf: zipfile.ZipFile, name: str, shape, total_bytes: int | None = None) -> None:
    """An .npy member declaring ``shape`` float32, written as zeros in 1 MB chunks (deflated)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
    n = total_bytes if total_bytes is not None else int(np.prod(shape)) * 4
    with zf.open(name, "w", force_zip64=True) as f:
        f.write(header.getvalue())
        chunk = bytes(1 << 20)
        while n > 0:
            f.write(chunk[:min(n, len(chunk))])
            n -= len(chunk)


@pytest.mark.parametrize("precision_shape, extra", [((4096, 4096), None), ((128, 128), 64 << 20)],
                         ids=["a bigger array", "a right-shaped array with trailing data"])
def test_a_quality_npz_that_would_inflate_is_refused_before_loading(tiny_copy, precision_shape, extra):
    d = ModelFolder.open(tiny_copy).config.quality.feature_dim
    assert d == 128
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        _npz_member(zf, "mean.npy", (d,))
        _npz_member(zf, "precision.npy", precision_shape, extra)
    data = buf.getvalue()
    assert len(data) < 2 * 1024 * 1024  # small on disk, 64 MB inflated
    replace_file(tiny_copy / "quality.npz", data)
    edit_config(tiny_copy, lambda c: c["sha256"].update({"quality.npz": sha256_file(tiny_copy / "quality.npz")}))
    assert _peak_bytes_of_a_refused_load(tiny_copy, "precision.npy") < 32 * 1024 * 1024


def test_quality_statistics_with_nan_are_refused(tiny_copy):
    d = 128
    precision = np.eye(d, dtype=np.float32)
    precision[3, 3] = np.nan
    buf = io.BytesIO()
    np.savez(buf, mean=np.zeros(d, np.float32), precision=precision)
    replace_file(tiny_copy / "quality.npz", buf.getvalue())
    edit_config(tiny_copy, lambda c: c["sha256"].update({"quality.npz": sha256_file(tiny_copy / "quality.npz")}))
    with pytest.raises(ModelLoadError, match="NaN"):
        load_model(tiny_copy)


# ------------------------------------------------------------------ the typed config and its one writer


def test_the_config_round_trips_and_keeps_every_key(bundled):
    spec = bundled.spec
    again = ModelConfig.from_json(spec.to_json())
    assert again == spec or (spec.format_version == 1 and again.to_dict() == spec.to_dict())
    legacy = json.loads(config_path(BUNDLED_MODEL).read_text())
    written = spec.to_dict()
    file_keys = {"weights_file", "weights_sha256", "onnx_sha256"}
    assert set(legacy) - file_keys <= set(written)
    for key in set(legacy) - file_keys - {"quality", "format_version"}:
        assert written[key] == legacy[key], key
    assert {k: v for k, v in legacy["quality"].items() if k != "sha256"} == written["quality"]


def test_update_is_validated_and_never_blesses_a_changed_file(tiny_copy):
    folder = ModelFolder.open(tiny_copy)
    with pytest.raises(ModelLoadError, match="threshold"):
        folder.update(threshold=2.0)
    tamper(tiny_copy / "model.onnx")
    folder.update(metrics={"test": {"n": 5}})
    written = json.loads((tiny_copy / "skinmole.json").read_text())
    assert written["metrics"] == {"test": {"n": 5}} and written["threshold"] == folder.config.threshold
    with pytest.raises(ModelLoadError, match="sha256 of model.onnx"):
        load_model(tiny_copy)
    folder.update(written=["model.onnx"])  # what export does after writing a new model.onnx
    assert ModelFolder.open(tiny_copy).config.sha256["model.onnx"] == sha256_file(tiny_copy / "model.onnx")


def test_update_refuses_a_file_without_a_digest(tiny_copy):
    folder = ModelFolder.open(tiny_copy)
    (tiny_copy / "other.onnx").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="other.onnx"):
        folder.update(onnx_file="other.onnx")


# ------------------------------------------------------------------ the head: one place for the arithmetic


def _config(class_names, malignant, threshold=0.3, temperature=1.0) -> ModelConfig:
    return ModelConfig.from_dict({
        "format_version": 2, "architecture": "x", "input_size": 64, "class_names": class_names,
        "malignant_classes": malignant, "threshold": threshold, "temperature": temperature,
        "weights_files": list(KERAS_DIR_FILES), "sha256": {n: "0" * 64 for n in KERAS_DIR_FILES}})


def test_the_head_kind_is_decided_by_the_class_names():
    binary = _config(["benign", "malignant"], ["malignant"])
    seven = _config(["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"], ["akiec", "bcc", "mel"])
    assert binary.binary and binary.n_logits == 1 and not seven.binary and seven.n_logits == 7
    with pytest.raises(ModelLoadError, match="malignant_classes"):
        _config(["benign", "malignant"], ["benign"])


def test_the_head_answers_probability_label_and_differential():
    head = Head.from_config(_config(["a", "b", "c"], ["b", "c"], threshold=0.5, temperature=2.0))
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    ans = head.answer(logits)
    z = np.exp(logits / 2.0)
    p = (z[:, 1] + z[:, 2]) / z.sum(axis=1)
    np.testing.assert_allclose(ans.p_malignant, p)
    assert ans.labels == ["benign", "malignant", "malignant"]  # 2/3 >= 0.5
    assert ans.differential(0) == pytest.approx(dict(zip("abc", z[0] / z[0].sum())))
    binary = Head.from_config(_config(["benign", "malignant"], ["malignant"], threshold=0.5)).answer(np.zeros((2, 1)))
    assert binary.differential(0) is None and binary.labels == ["malignant", "malignant"]  # p == threshold
    with pytest.raises(ModelLoadError, match="logits"):
        head.answer(np.zeros((2, 7)))


def test_the_label_rule_is_p_at_or_above_the_threshold():
    assert label_at(0.3, 0.3) == "malignant" and label_at(0.2999, 0.3) == "benign"
    assert list(label_at(np.array([0.1, 0.3, 0.9]), 0.3)) == ["benign", "malignant", "malignant"]


def test_predictions_use_the_head(bundled):
    x = _pixels(bundled.input_size, 3)
    logits, _ = bundled.engine.run(x)
    answers = bundled.head.answer(logits)
    preds = skinmole.predict(sample_paths()[:3], check_quality=False)
    assert [p.malignant_probability for p in preds] == [float(v) for v in answers.p_malignant]
    assert [p.label for p in preds] == answers.labels


def test_model_load_error_is_a_value_error():
    assert issubclass(ModelLoadError, ValueError) and issubclass(skinmole.InvalidImageError, ValueError)
