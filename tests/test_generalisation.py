"""Issue 11's tools: per-source metrics, the operating point that holds within each source, the
left-out-clinic options, Shades-of-Gray colour constancy inside the model (Keras and ONNX agree),
and training that resumes after an interruption."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import ham10000_or_skip
from skinmole.calibration import threshold_for_sensitivity, threshold_within_groups
from skinmole.data import LabelledSet
from skinmole.evaluation import metrics_by_source, roc_auc


def test_pooled_auc_can_hide_a_source_mix_that_metrics_by_source_reveals():
    rng = np.random.default_rng(0)
    # Source "a" is mostly malignant with high scores, "b" mostly benign with low scores; within each
    # source the score is pure noise, so the within-source AUC is ~0.5 while the pooled one is high.
    y = np.r_[rng.random(300) < 0.8, rng.random(300) < 0.05].astype(int)
    p = np.r_[0.6 + 0.4 * rng.random(300), 0.4 * rng.random(300)]
    src = np.array(["a"] * 300 + ["b"] * 300)
    m = metrics_by_source(y, p, src, threshold=0.5)
    assert m["pooled"]["roc_auc"] > 0.85
    assert abs(m["a"]["roc_auc"] - 0.5) < 0.12
    assert m["a"]["n"] == 300 and m["pooled"]["n"] == 600 and m["b"]["n_malignant"] == int(y[300:].sum())
    few = metrics_by_source(np.r_[1, 0, 0, 0], np.r_[0.9, 0.1, 0.2, 0.3], np.array(["c"] * 4), 0.5)
    assert few["c"]["roc_auc"] is None  # one malignant image: no within-source AUC is reported
    assert few["c"]["sensitivity"] == 1.0 and few["c"]["specificity"] == 1.0


def test_threshold_within_groups_keeps_the_sensitivity_in_every_large_source():
    rng = np.random.default_rng(1)
    n = 600
    g = np.array(["easy"] * n + ["hard"] * n + ["tiny"] * 40)
    y = rng.integers(0, 2, len(g))
    shift = np.where(g == "easy", 0.6, 0.15)  # malignant images of "hard" score lower
    s = rng.random(len(g)) + y * shift
    t, used = threshold_within_groups(y, s, g, 0.9)
    assert used == ["easy", "hard"]  # "tiny" has under 50 malignant images: it does not vote
    for name in used:
        m = g == name
        assert (s[m][y[m] == 1] >= t).mean() >= 0.9
    pooled = threshold_for_sensitivity(y, s, 0.9)
    assert t <= pooled
    hard = g == "hard"
    assert (s[hard][y[hard] == 1] >= pooled).mean() < 0.9  # the pooled threshold alone misses in "hard"


def _set(sources, labels):
    n = len(sources)
    return LabelledSet([f"{i}.jpg" for i in range(n)], labels, None, {"source": list(sources)}, "mem")


def test_exclude_sources_and_source_class_weights():
    from skinmole.training import _source_class_weights, _without_sources

    s = _set(["v"] * 6 + ["r"] * 4, ["benign"] * 5 + ["malignant"] + ["malignant"] * 2 + ["benign"] * 2)
    kept = _without_sources(s, "r")
    assert len(kept) == 6 and set(kept.metadata["source"]) == {"v"}
    with pytest.raises(ValueError, match="no images from source"):
        _without_sources(s, "elsewhere")
    w = _source_class_weights(s, np.ones(len(s)))
    y, src = s.y, np.array(s.metadata["source"])
    # Weighted, every source has the pooled share of malignant images (within the clip range).
    pooled = y.mean()
    for name in ("v", "r"):
        m = src == name
        assert (w[m] * y[m]).sum() / w[m].sum() == pytest.approx(pooled, abs=1e-6)
    assert w.mean() == pytest.approx(1.0)


def test_unknown_diagnosis_is_read_as_its_label_classes(tmp_path):
    """ISIC 2020's benign "unknown" rows: allowed = every benign class; a known dx stays one-hot;
    "unknown" without a label, or a label that contradicts the dx, is refused."""
    from skinmole.data import DX_CLASSES, MALIGNANT_DX, DatasetError, read_csv

    for name in ("a", "b", "c", "d"):
        (tmp_path / f"{name}.jpg").write_bytes(b"x")
    (tmp_path / "labels.csv").write_text(
        "image,label,dx\na.jpg,benign,unknown\nb.jpg,malignant,mel\nc.jpg,malignant,unknown\nd.jpg,benign,nv\n")
    s = read_csv(tmp_path / "labels.csv", image_dir=tmp_path)
    allowed = s.allowed_classes()
    benign = [c not in MALIGNANT_DX for c in DX_CLASSES]
    assert allowed[0].tolist() == [float(b) for b in benign]
    assert allowed[2].tolist() == [float(not b) for b in benign]
    assert allowed[1].tolist() == [float(c == "mel") for c in DX_CLASSES]
    assert allowed[3].sum() == 1 and s.has_unknown_dx
    with pytest.raises(DatasetError, match="unknown diagnosis"):
        s.dx_index
    (tmp_path / "bad.csv").write_text("image,dx\na.jpg,unknown\n")
    with pytest.raises(DatasetError, match="needs a benign/malignant label"):
        read_csv(tmp_path / "bad.csv", image_dir=tmp_path)
    (tmp_path / "bad2.csv").write_text("image,label,dx\na.jpg,benign,mel\nb.jpg,malignant,mel\n")
    with pytest.raises(DatasetError, match="contradicts"):
        read_csv(tmp_path / "bad2.csv", image_dir=tmp_path)


def test_partial_cross_entropy_and_the_weights_of_unknown_images():
    """One-hot rows: exactly categorical cross-entropy. Unknown rows: -log of the allowed classes'
    summed softmax. Their class weight is the count-weighted mean over the allowed classes."""
    import keras

    from skinmole.training import _partial_cross_entropy, _per_image_class_weights

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7)).astype("float32")
    allowed = np.zeros((4, 7), "float32")
    allowed[0, 2] = allowed[1, 5] = 1
    allowed[2, [2, 3, 5, 6]] = 1
    allowed[3, [0, 1, 4]] = 1
    got = np.asarray(_partial_cross_entropy(allowed, logits))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    want = -np.log((p * allowed).sum(axis=1))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    cce = keras.losses.CategoricalCrossentropy(from_logits=True, reduction=None)(allowed[:2], logits[:2])
    np.testing.assert_allclose(got[:2], np.asarray(cce), rtol=1e-5)

    weights = {i: float(i + 1) for i in range(7)}
    w = _per_image_class_weights(allowed, weights)
    assert w[0] == pytest.approx(3.0) and w[1] == pytest.approx(6.0)
    # Known images: one of class 2 and one of class 5, so the unknown benign row gets (3 + 6) / 2.
    assert w[2] == pytest.approx(4.5)
    assert np.all(_per_image_class_weights(allowed, None) == 1)


def _sog_reference(x: np.ndarray, p: float = 6.0, eps: float = 1e-6) -> np.ndarray:
    unit = x.astype(np.float64) / 255.0
    e = (np.mean(unit ** p, axis=(1, 2), keepdims=True) + eps) ** (1 / p)
    return np.clip(x * (e.mean(axis=-1, keepdims=True) / e), 0, 255)


def test_shades_of_gray_layer_removes_a_colour_cast_and_matches_the_formula():
    pytest.importorskip("keras")
    from skinmole.colour_constancy import ShadesOfGray

    rng = np.random.default_rng(2)
    scene = rng.uniform(20, 160, (2, 32, 32, 3)).astype(np.float32)
    cast = scene * np.array([1.3, 1.0, 0.75], np.float32)  # a warm camera: same scene, other illuminant
    layer = ShadesOfGray()
    a, b = np.asarray(layer(scene)), np.asarray(layer(cast))
    np.testing.assert_allclose(a, _sog_reference(scene), rtol=1e-4, atol=1e-2)
    # Up to the overall brightness, the cast is gone: the two normalised images agree.
    ratio = (b / np.maximum(a, 1e-3)).reshape(2, -1, 3).mean(axis=1)
    np.testing.assert_allclose(ratio[:, 0], ratio[:, 1], rtol=2e-3)
    np.testing.assert_allclose(ratio[:, 1], ratio[:, 2], rtol=2e-3)


def test_shades_of_gray_model_exports_to_onnx_with_the_same_outputs(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from skinmole import architectures
    from skinmole.onnx_export import keras_to_onnx

    model = architectures.build("simple-cnn", 48, 7, colour_constancy="shades-of-gray")
    assert model.get_layer("shades_of_gray") is not None
    onnx_model = keras_to_onnx(model)
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_model.SerializeToString())
    x = np.random.default_rng(3).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"pixels": x})[0]
    np.testing.assert_allclose(got, np.asarray(model(x.astype("float32"))), atol=1e-4)


def test_training_resumes_after_an_interruption_and_refuses_other_options(tmp_path, monkeypatch):
    root = ham10000_or_skip()
    from skinmole import training
    from skinmole.training import TrainOptions, train

    opts = dict(data=str(root / "labels.csv"), output=str(tmp_path / "m"), architecture="simple-cnn",
                input_size=48, limit=40, batch_size=16, warmup_epochs=0, epochs=2,
                cache_dir=str(tmp_path / "cache"), verbose=0)

    class Stop(Exception):
        pass

    original = training.Checkpoint.backup

    def backup_then_stop(self, phase):
        cb = original(self, phase)
        save = cb.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            save(epoch, logs)
            raise Stop("killed after the first epoch")
        cb.on_epoch_end = on_epoch_end
        return cb

    monkeypatch.setattr(training.Checkpoint, "backup", backup_then_stop)
    with pytest.raises(Stop):
        train(TrainOptions(**opts))
    state = json.loads((tmp_path / "m" / "checkpoint" / "state.json").read_text())
    assert [r["epoch"] for r in state["history"]] == [1]
    monkeypatch.setattr(training.Checkpoint, "backup", original)
    with pytest.raises(ValueError, match="other options"):
        train(TrainOptions(**{**opts, "learning_rate": 1e-2}))
    trained_epochs = []
    progress = training.Checkpoint.save_progress
    monkeypatch.setattr(training.Checkpoint, "save_progress",
                        lambda self, history, *a: (trained_epochs.append(history[-1]["epoch"]), progress(self, history, *a)))
    out = train(TrainOptions(**opts))  # the same command again: resumes at epoch 2
    assert trained_epochs == [2]
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[0] == {**state["history"][0]}  # the first epoch was not trained again
    assert not (out / "checkpoint").exists()  # removed once the folder is written
    cfg = json.loads((out / "skinmole.json").read_text())
    assert "by_source" in cfg["metrics"]["val"] and cfg["training"]["epochs"] == 2


def test_operating_point_words_state_the_rates_within_each_collection():
    from skinmole import wording

    config = {"threshold": 0.3, "threshold_rule": "val sensitivity 0.90 pooled and within a, b",
              "metrics": {"test": {"n": 100, "sensitivity": 0.9, "specificity": 0.7, "split": "ham10000[test]",
                                   "by_source": {"rosendahl": {"roc_auc": 0.8, "sensitivity": 0.93, "specificity": 0.27},
                                                 "vidir_molemax": {"roc_auc": None, "sensitivity": 0.0, "specificity": 1.0}}}}}
    text = wording.operating_point(config)
    assert "pooled and within each of a, b" in text
    assert "rosendahl (Queensland) sensitivity 93%, specificity 27%" in text
    assert "vidir_molemax" not in text  # too few malignant images for an AUC: not quoted
    assert "other clinics" in text
