"""ONNX export and the two engines: same outputs, checked files, the right engine picked, and a
serving path that never imports TensorFlow. Outputs are compared between runs, never to constants."""

from __future__ import annotations

import builtins
import subprocess
import sys

import numpy as np
import pytest

import skinmole
from skinmole.images import load_image, to_model_input
from skinmole.model import BUNDLED_MODEL, ModelLoadError, load_model, read_config
from skinmole.model_folder import sha256_file

from helpers import ROOT, copy_model_folder, edit_config, tamper  # noqa: E402
from skinmole.commands import export_onnx  # noqa: E402

SAMPLES = sorted((ROOT / "skinmole" / "samples").glob("*.jpg"))
ATOL = 1e-4

pytest.importorskip("onnx", reason="ONNX export needs the 'onnx' package (dev extra)")
pytest.importorskip("onnxruntime", reason="the ONNX engine needs onnxruntime")


@pytest.fixture(scope="session")
def folders(tiny_folder, tmp_path_factory):
    """{architecture: model folder with model.onnx}: the tiny untrained simple-cnn of conftest, and a
    copy of the bundled efficientnet-lite0 exported afresh through skinmole export-onnx."""
    lite0 = copy_model_folder(BUNDLED_MODEL, tmp_path_factory.mktemp("engines") / "lite0")
    (lite0 / "model.onnx").unlink()  # export afresh: the script is what is tested
    assert export_onnx.main(["--model", str(lite0)]) == 0
    return {"simple-cnn": tiny_folder, "efficientnet-lite0": lite0}


def _batch(size, n=6):
    real = [to_model_input(load_image(p), size) for p in SAMPLES[:n - 2]]
    rng = np.random.default_rng(1)
    noise = list(rng.integers(0, 256, size=(2, size, size, 3), dtype=np.uint8))
    return np.stack(real + noise)


@pytest.mark.parametrize("arch", ["simple-cnn", "efficientnet-lite0"])
def test_engines_give_the_same_outputs(folders, arch):
    onnx_model = load_model(folders[arch], engine="onnx")
    keras_model = load_model(folders[arch], engine="keras")
    assert onnx_model.engine.name == "onnx" and keras_model.engine.name == "keras"
    batch = _batch(onnx_model.input_size)
    o_logits, o_features = onnx_model.engine.run(batch)
    k_logits, k_features = keras_model.engine.run(batch)
    assert o_logits.shape == k_logits.shape == (len(batch), len(onnx_model.class_names))
    assert o_features.shape == k_features.shape and o_features.shape[0] == len(batch)
    assert np.abs(o_logits - k_logits).max() <= ATOL
    assert np.abs(o_features - k_features).max() <= ATOL
    assert np.abs(k_logits).max() > 0  # not a degenerate comparison of zeros
    one_logits, _ = onnx_model.engine.run(batch[:1])  # a batch of one: the dynamic batch axis works
    assert np.abs(one_logits - o_logits[:1]).max() <= ATOL
    onnx_model.engine.max_batch = 4  # a long batch is run in slices, in order
    s_logits, s_features = onnx_model.engine.run(batch)
    assert s_logits.shape == o_logits.shape and np.abs(s_logits - o_logits).max() <= ATOL
    assert np.abs(s_features - o_features).max() <= ATOL


def test_predictions_match_between_engines(folders):
    folder = folders["efficientnet-lite0"]
    fast = skinmole.predict(SAMPLES, model=load_model(folder, engine="onnx"), check_quality=False)
    slow = skinmole.predict(SAMPLES, model=load_model(folder, engine="keras"), check_quality=False)
    for a, b in zip(fast, slow):
        assert abs(a.malignant_probability - b.malignant_probability) <= ATOL
        assert a.label == b.label or abs(a.malignant_probability - a.threshold) <= ATOL


def test_export_records_the_file_and_is_deterministic(folders, tmp_path):
    from skinmole.onnx_export import export_model_folder

    folder = folders["simple-cnn"]
    cfg = read_config(folder)
    assert cfg["onnx_file"] == "model.onnx"
    assert cfg["sha256"]["model.onnx"] == sha256_file(folder / "model.onnx")
    assert cfg["sha256"]["model.weights.h5"] == sha256_file(folder / "model.weights.h5")
    copy = copy_model_folder(folder, tmp_path / "again")
    export_model_folder(copy)  # from the saved Keras weights this time
    assert read_config(copy)["sha256"]["model.onnx"] == cfg["sha256"]["model.onnx"]
    assert read_config(copy) == cfg


def test_tampered_onnx_file_is_refused(folders, tmp_path):
    copy = copy_model_folder(folders["simple-cnn"], tmp_path / "tampered")
    tamper(copy / "model.onnx")
    with pytest.raises(ModelLoadError, match="sha256 of model.onnx"):
        load_model(copy)
    (copy / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match="model.onnx is missing"):
        load_model(copy)


def _without_onnx(folder):
    def change(c):
        c.pop("onnx_file"), c["sha256"].pop("model.onnx")
    edit_config(folder, change)
    (folder / "model.onnx").unlink()


def test_auto_picks_onnx_when_present_and_keras_otherwise(folders, tmp_path):
    assert load_model(folders["simple-cnn"]).engine.name == "onnx"
    assert load_model(folders["simple-cnn"], engine="keras").engine.name == "keras"
    plain = copy_model_folder(folders["simple-cnn"], tmp_path / "plain")
    _without_onnx(plain)
    assert load_model(plain).engine.name == "keras"
    with pytest.raises(ModelLoadError, match="no ONNX file"):
        load_model(plain, engine="onnx")
    with pytest.raises(ValueError, match="engine must be"):
        load_model(plain, engine="tflite")


def _block_onnxruntime(monkeypatch, error):
    """Make ``import onnxruntime`` raise ``error()`` (as if it were missing, broken or interrupted)."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise error()
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_a_missing_onnxruntime_is_said_not_replaced_by_keras(folders, monkeypatch):
    _block_onnxruntime(monkeypatch, lambda: ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime"))
    for engine in ("auto", "onnx"):
        with pytest.raises(ModelLoadError, match="pip install onnxruntime"):
            load_model(folders["simple-cnn"], engine=engine)
    assert load_model(folders["simple-cnn"], engine="keras").engine.name == "keras"  # the explicit opt-in


def test_a_broken_onnxruntime_is_an_error_not_a_fallback(folders, monkeypatch):
    _block_onnxruntime(monkeypatch, lambda: ImportError("DLL load failed"))
    with pytest.raises(ModelLoadError, match="cannot be imported"):
        load_model(folders["simple-cnn"])


def _interrupt_wrapped_in_import_error():
    """What an extension module's init can raise when Ctrl-C lands inside it."""
    error = ImportError("initialization of _pybind_state raised unreported exception")
    error.__cause__ = KeyboardInterrupt()
    return error


@pytest.mark.parametrize("error", [KeyboardInterrupt, _interrupt_wrapped_in_import_error],
                         ids=["interrupt", "interrupt wrapped in ImportError"])
def test_ctrl_c_while_onnxruntime_imports_stays_an_interrupt(folders, monkeypatch, error):
    _block_onnxruntime(monkeypatch, error)
    with pytest.raises(KeyboardInterrupt):
        load_model(folders["simple-cnn"])


def test_unsupported_layer_is_a_clear_error():
    import keras

    from skinmole.onnx_export import OnnxExportError, keras_to_onnx

    inputs = keras.Input((16, 16, 3), name="pixels")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.LayerNormalization(name="odd_norm")(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(x))
    with pytest.raises(OnnxExportError, match="odd_norm.*LayerNormalization"):
        keras_to_onnx(model)


def test_export_script_reports_a_bad_folder(tmp_path, capsys):
    assert export_onnx.main(["--model", str(tmp_path)]) == 1
    assert "not a skinmole model folder" in capsys.readouterr().err


def test_iter_predict_overlapped_decoding_keeps_order_and_errors(folders, tmp_path):
    model = load_model(folders["simple-cnn"])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    sources = [*SAMPLES, str(bad), *SAMPLES[::-1], tmp_path / "missing.jpg", SAMPLES[0]]
    inline = list(skinmole.iter_predict(sources, model, batch_size=3, workers=0))
    ahead = list(skinmole.iter_predict(sources, model, batch_size=3, workers=2))
    assert [s for s, _ in inline] == [s for s, _ in ahead] == sources
    for (_, a), (_, b) in zip(inline, ahead):
        assert type(a) is type(b)
        if isinstance(a, skinmole.InvalidImageError):
            assert str(a) == str(b)
        else:
            assert a.malignant_probability == b.malignant_probability
    assert isinstance(ahead[len(SAMPLES)][1], skinmole.InvalidImageError)
    one_by_one = [skinmole.predict(p, model=model).malignant_probability for p in SAMPLES]
    assert [p.malignant_probability for p in skinmole.predict(SAMPLES, model=model)] == one_by_one
    with pytest.raises(skinmole.InvalidImageError, match="bad.jpg"):
        skinmole.predict([SAMPLES[0], str(bad)], model=model)
    with pytest.raises(ValueError, match="batch_size"):
        skinmole.predict(SAMPLES, model=model, batch_size=0)
    gen = skinmole.iter_predict(iter(SAMPLES * 20), model, batch_size=2, workers=2)
    next(gen)
    gen.close()  # stopping early shuts the decoder threads down without hanging


SERVE = """
import sys
import skinmole
m = skinmole.load_model(sys.argv[1])
p = skinmole.predict(sys.argv[2], model=m)
ps = list(skinmole.iter_predict([sys.argv[2]] * 3, m))
heavy = sorted(k for k in ("tensorflow", "keras", "torch", "sklearn") if k in sys.modules)
print(m.engine.name, p.label is not None or p.quality, len(ps), ",".join(heavy) or "none")
"""


def test_serving_path_does_not_import_tensorflow(folders):
    res = subprocess.run([sys.executable, "-c", SERVE, str(folders["efficientnet-lite0"]), str(SAMPLES[0])],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    engine, _, n, heavy = res.stdout.split()
    assert engine == "onnx" and n == "3"
    assert "tensorflow" not in heavy and "keras" not in heavy, heavy


def test_predict_with_the_default_model_does_not_import_tensorflow():
    code = ("import sys, skinmole; p = skinmole.predict(sys.argv[1]); "
            "print(p.label, sorted(m for m in ('tensorflow', 'keras', 'sklearn', 'torch') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code, str(SAMPLES[0])], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    label, heavy = res.stdout.strip().split(" ", 1)
    assert label in ("benign", "malignant", "None") and heavy == "[]", res.stdout


def test_import_is_light():
    code = "import sys, skinmole; print(sorted(m for m in ('tensorflow', 'keras', 'onnxruntime', 'torch') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
