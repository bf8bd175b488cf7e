"""predict()/iter_predict(): consistent, order-preserving and input-kind-agnostic answers.

No hard-coded probabilities: the bundled model changes; runs are compared with each other. Numbers are
compared with the quality gate off (``NO_GATE``), so that they hold whether or not the bundled model has
a gate and whichever samples it refuses; the gate's own contract is checked separately.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import skinmole
from skinmole import InvalidImageError, Prediction, iter_predict, load_image, predict
from skinmole.predict import SUMMARY_HEADER, ModelInfo
from skinmole.quality import QualityReport
from skinmole.sample_images import SAMPLES, sample_path, sample_paths

BATCH_TOL = 1e-6
NO_GATE = {"check_quality": False}


@pytest.fixture(scope="module")
def model(bundled):
    return bundled


@pytest.fixture(scope="module")
def singles(model) -> list[Prediction]:
    return [predict(p, model, **NO_GATE) for p in sample_paths()]


@pytest.fixture(scope="module")
def batch(model) -> list[Prediction]:
    return predict(sample_paths(), model, **NO_GATE)


def probs(preds) -> np.ndarray:
    return np.array([p.malignant_probability for p in preds])


def test_the_samples_exist_with_their_documented_labels():
    paths = sample_paths()
    assert len(paths) == 6 and all(p.is_file() for p in paths)
    assert {s.label for s in SAMPLES} == {"benign", "malignant"}
    assert {"nv", "bkl", "mel", "bcc"} <= {s.dx for s in SAMPLES}
    readme = (paths[0].parent / "README.md").read_text()
    for s in SAMPLES:
        assert s.file in readme and s.dx in readme
    assert "CC BY-NC 4.0" in readme and "Tschandl" in readme and "180161" in readme


def test_single_equals_batch(singles, batch):
    assert len(batch) == len(singles)
    np.testing.assert_allclose(probs(batch), probs(singles), atol=BATCH_TOL, rtol=0)
    for s, b in zip(singles, batch):
        assert s.label == b.label or abs(s.malignant_probability - s.threshold) < BATCH_TOL


def test_batch_size_does_not_change_answers(batch, model):
    for batch_size in (1, 4):
        np.testing.assert_allclose(probs(predict(sample_paths(), model, batch_size=batch_size, **NO_GATE)), probs(batch),
                                   atol=BATCH_TOL, rtol=0)


def test_determinism(model, batch):
    again = predict(sample_paths(), model, **NO_GATE)
    assert probs(again).tolist() == probs(batch).tolist()
    one = predict(sample_paths()[3], model, **NO_GATE)
    assert predict(sample_paths()[3], model, **NO_GATE).malignant_probability == one.malignant_probability


def test_input_order_is_preserved(model, batch):
    reordered = [3, 0, 5, 1, 4, 2]
    out = predict([sample_paths()[i] for i in reordered], model, batch_size=4, **NO_GATE)
    np.testing.assert_allclose(probs(out), probs(batch)[reordered], atol=BATCH_TOL, rtol=0)
    assert len(set(np.round(probs(batch), 6))) > 1, "the samples should not all get one probability"


def test_a_tuple_is_a_batch_and_an_empty_list_is_empty(model):
    assert isinstance(predict(tuple(sample_paths()[:2]), model), list)
    assert predict([], model) == []


def test_every_input_kind_gives_the_same_answer(model, tmp_path):
    path = sample_path("mel")
    data = path.read_bytes()
    rgb = load_image(path)
    reference = predict(rgb, model, **NO_GATE).malignant_probability
    with open(path, "rb") as f:
        sources = {
            "str path": str(path),
            "Path": Path(path),
            "bytes": data,
            "binary file": f,
            "BytesIO": io.BytesIO(data),
            "PIL image": Image.open(path),
            "uint8 HxWx3": rgb,
        }
        for kind, source in sources.items():
            p = predict(source, model, **NO_GATE)
            assert p.malignant_probability == pytest.approx(reference, abs=BATCH_TOL), kind
    gray = np.asarray(Image.open(path).convert("L"))
    assert gray.ndim == 2
    p_gray = predict(gray, model, **NO_GATE).malignant_probability
    assert p_gray == pytest.approx(predict(np.dstack([gray] * 3), model, **NO_GATE).malignant_probability,
                                   abs=BATCH_TOL)


def test_mixed_kinds_in_one_list_keep_their_order(model, batch):
    paths = sample_paths()
    sources = [str(paths[0]), paths[1], paths[2].read_bytes(), Image.open(paths[3]), load_image(paths[4]),
               io.BytesIO(paths[5].read_bytes())]
    np.testing.assert_allclose(probs(predict(sources, model, **NO_GATE)), probs(batch), atol=BATCH_TOL, rtol=0)


def test_prediction_fields_and_json(batch, model):
    for p in batch:
        assert isinstance(p, Prediction)
        assert isinstance(p.malignant_probability, float) and 0.0 <= p.malignant_probability <= 1.0
        assert p.threshold == model.threshold
        d = p.to_dict()
        assert {"malignant_probability", "label", "threshold", "diagnosis", "quality", "model"} <= set(d)
        back = json.loads(json.dumps(d, allow_nan=False))
        assert back["malignant_probability"] == p.malignant_probability and back["label"] == p.label
        assert back["model"]["architecture"] == model.config["architecture"]
        assert back["quality"]["accepted"] is True and back["quality"]["checked"] is False


def test_label_follows_the_threshold(batch):
    for p in batch:
        assert p.label == ("malignant" if p.malignant_probability >= p.threshold else "benign")


def test_diagnosis_is_a_distribution_consistent_with_the_malignant_probability(batch, model):
    if len(model.class_names) < 2:
        pytest.skip("the bundled model has a binary head: no diagnosis")
    for p in batch:
        assert list(p.diagnosis) == model.class_names
        assert sum(p.diagnosis.values()) == pytest.approx(1.0, abs=1e-5)
        assert all(0.0 <= v <= 1.0 for v in p.diagnosis.values())
        p_mal = sum(p.diagnosis[c] for c in model.malignant_classes)
        assert p.malignant_probability == pytest.approx(p_mal, abs=1e-6)


def test_with_the_quality_gate_on_an_answer_is_a_probability_or_a_reasoned_refusal(model, batch):
    gated = predict(sample_paths(), model)  # check_quality=True, the default
    for p, ref in zip(gated, batch):
        assert p.threshold == ref.threshold and "accepted" in p.quality
        if p.quality["accepted"]:  # the gate changes nothing about an accepted image's numbers
            assert p.malignant_probability == pytest.approx(ref.malignant_probability, abs=BATCH_TOL)
            assert p.label == ref.label
        else:
            assert p.malignant_probability is None and p.label is None and p.diagnosis is None
            assert p.quality["issues"] and all(isinstance(i, str) for i in p.quality["issues"])
        json.dumps(p.to_dict(), allow_nan=False)
    if model.quality_gate is None:
        assert all(p.quality == QualityReport() for p in gated)


def test_quality_check_can_be_turned_off(batch):
    for p in batch:
        assert p.malignant_probability is not None and p.label in ("benign", "malignant")
        assert p.quality["accepted"] is True and p.quality.get("checked") is False


@pytest.fixture(scope="module")
def refused(model) -> Prediction:
    """A black square: the gate refuses it (too dark, no detail)."""
    if model.quality_gate is None:
        pytest.skip("the bundled model has no quality gate")
    p = predict(np.zeros((300, 300, 3), np.uint8), model)
    assert not p.accepted
    return p


def test_quality_and_model_are_typed_and_still_read_as_dicts(batch, model):
    p = batch[0]
    assert isinstance(p.quality, QualityReport) and isinstance(p.model, ModelInfo)
    assert (p.model.name, p.model.version, p.model.architecture) == (model.name, model.version, model.architecture)
    assert p.model["architecture"] == model.architecture and dict(p.model) == p.model.to_dict()
    assert p.quality["accepted"] is p.quality.accepted is True and p.quality.get("checked") is False
    assert dict(p.quality) == p.quality.to_dict() and "issues" in p.quality and "nope" not in p.quality
    assert p.quality.get("nope", 7) == 7
    with pytest.raises(KeyError):
        p.quality["nope"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.quality.accepted = False
    p.quality.to_dict()["issues"].append("changed")  # the JSON form is a copy
    assert p.quality.issues == []


def test_quality_has_one_shape_whether_or_not_the_gate_ran(model, batch, refused):
    keys = [f.name for f in dataclasses.fields(QualityReport)]
    gated = predict(sample_paths()[0], model)
    for p in (gated, refused, batch[0]):
        assert list(p.quality) == keys and list(p.to_dict()["quality"]) == keys
    off = batch[0].quality
    assert off.checked is False and off.failed_checks == [] and off.issues == []
    assert all(off[k] is None for k in keys[keys.index("short_side"):])
    assert gated.quality.checked is True and isinstance(gated.quality.ood_threshold, float)
    assert refused.quality.checked is True and refused.quality.failed_checks and refused.quality.issues


def test_accepted_and_top_diagnosis(batch, refused):
    for p in batch:
        assert p.accepted is True
        assert p.top_diagnosis == max(p.diagnosis.items(), key=lambda kv: kv[1])[0]
    assert refused.accepted is False and refused.top_diagnosis is None
    tie = Prediction(0.6, "malignant", 0.5, {"mel": 0.4, "nv": 0.4, "bkl": 0.2})
    assert tie.top_diagnosis == "mel" and tie.accepted is True


def test_summary_fills_the_table_columns(batch, refused):
    end_of = {col: SUMMARY_HEADER.index(col) + len(col) for col in ("p(malignant)", "threshold")}
    for p in batch:
        line = p.summary()
        prob, threshold = f"{p.malignant_probability:.3f}", f"{p.threshold:.3f}"
        assert line.startswith(p.label + " ") and line[:end_of["p(malignant)"]].endswith(" " + prob)
        assert line[:end_of["threshold"]].endswith(" " + threshold)
        assert line.endswith(f"  {p.top_diagnosis} {p.diagnosis[p.top_diagnosis]:.2f}") and "\n" not in line
    line = refused.summary()
    assert line.startswith("refused ") and line[:end_of["p(malignant)"]].endswith(" -")
    assert line.endswith("  " + "; ".join(refused.quality.issues))


def test_to_dict_survives_json_and_rebuilds_the_prediction(batch, refused, model):
    for p in (batch[0], refused, predict(sample_paths()[0], model)):
        d = p.to_dict()
        back = json.loads(json.dumps(d, allow_nan=False))
        assert back == d
        again = Prediction(**back)  # dicts become the typed objects
        assert isinstance(again.quality, QualityReport) and again.quality == p.quality
        assert again.model == p.model and again.to_dict() == d


def test_a_hand_built_prediction_takes_partial_dicts_and_rejects_unknown_keys():
    p = Prediction(None, None, 0.4, None, quality={"accepted": False, "issues": ["too dark"]},
                   model={"name": "stand-in"})
    assert p.accepted is False and p.quality.checked is False and p.model.version is None
    assert p.summary().endswith("  too dark")
    with pytest.raises(TypeError, match="colour"):
        Prediction(0.5, "benign", 0.5, None, quality={"accepted": True, "colour": 1.0})


def test_default_model_is_the_bundled_one(batch, model):
    assert predict(sample_paths()[0], **NO_GATE).malignant_probability == pytest.approx(
        batch[0].malignant_probability, abs=BATCH_TOL)
    assert skinmole.load_model() is model and model.folder == skinmole.model.BUNDLED_MODEL


def test_a_bad_image_in_a_list_raises_naming_it(model, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("no image here")
    with pytest.raises(InvalidImageError, match="bad.jpg"):
        predict([sample_paths()[0], bad], model)


def test_iter_predict_yields_errors_in_place(model, batch, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    sources = [str(p) for p in sample_paths()]
    sources.insert(2, str(bad))
    sources.append(str(tmp_path / "missing.jpg"))
    out = list(iter_predict(sources, model, batch_size=3, **NO_GATE))
    assert [s for s, _ in out] == sources
    assert isinstance(out[2][1], InvalidImageError) and "bad.png" in str(out[2][1])
    assert isinstance(out[-1][1], InvalidImageError) and "missing.jpg" in str(out[-1][1])
    good = [r for _, r in out if isinstance(r, Prediction)]
    np.testing.assert_allclose(probs(good), probs(batch), atol=BATCH_TOL, rtol=0)


@pytest.mark.parametrize("workers", [0, 1])
def test_iter_predict_is_lazy(model, workers):
    """The CLI relies on this to keep memory flat over 10,000 paths."""
    pulled = []

    def sources():
        for i in range(1000):
            pulled.append(i)
            yield sample_paths()[i % 6]

    it = iter_predict(sources(), model, batch_size=2, workers=workers)
    next(it)
    assert len(pulled) <= 2 * (workers + 2), f"{len(pulled)} sources read before the first answer"
    it.close()
