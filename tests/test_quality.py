"""The quality / out-of-distribution gate: pixel checks, OOD score, storage with the model, predict().

The gate is fitted once per session on a COPY of the bundled model folder, from a small evenly spaced
subset of the real HAM10000 train/val splits (200/100 images), so the bundled folder is never changed.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image, ImageFilter

from skinmole import ModelLoadError, load_model, predict
from helpers import copy_model_folder, ham10000_or_skip
from skinmole.data import load_set
from skinmole.images import load_image
from skinmole.model import BUNDLED_MODEL
from skinmole.model_folder import ModelFolder
from skinmole.quality import (
    CHECK_ORDER, QUALITY_FILE, QualityGate, fit_quality_gate, pixel_stats, pixel_thresholds,
)

PIXEL_CHECKS = [c for c in CHECK_ORDER if c != "not_dermoscopy"]


def _corpus_module():
    from skinmole import quality_evaluation

    return quality_evaluation


# ------------------------------------------------------------------ no model needed


def test_pixel_stats_measure_what_they_say():
    flat = np.full((2, 64, 64, 3), 120, np.uint8)
    flat[1] = 30
    s = pixel_stats(flat)
    assert np.allclose(s["brightness"], [120, 30], atol=0.5)
    assert np.allclose(s["contrast"], 0) and np.allclose(s["sharpness"], 0) and np.allclose(s["colourfulness"], 0)
    red = np.zeros((1, 8, 8, 3), np.uint8)
    red[..., 0] = 200
    assert pixel_stats(red)["colourfulness"][0] == pytest.approx(200)
    yy, xx = np.mgrid[0:64, 0:64]
    board = np.where(((yy // 2 + xx // 2) % 2)[..., None] == 1, 255, 0).astype(np.uint8).repeat(3, 2)[None]
    smooth = np.asarray(Image.fromarray(board[0]).filter(ImageFilter.GaussianBlur(3)))[None]
    sb, ss = pixel_stats(board), pixel_stats(smooth)
    assert sb["sharpness"][0] > 100 * max(ss["sharpness"][0], 1e-6)
    assert sb["contrast"][0] > 100


def test_thresholds_leave_margin_below_the_training_images():
    rng = np.random.default_rng(0)
    stats = {"brightness": rng.uniform(100, 200, 1000), "contrast": rng.uniform(10, 60, 1000),
             "sharpness": rng.uniform(8, 500, 1000), "colourfulness": rng.uniform(15, 90, 1000)}
    t = pixel_thresholds(stats, np.full(1000, 450.0), input_size=224)
    for key, name in (("brightness", "brightness"), ("contrast", "contrast"), ("sharpness", "sharpness"),
                      ("colourfulness", "colour")):
        low = t[f"{name}_min"]
        assert 0 < low <= 0.5 * np.percentile(stats[key], 0.5) + 1e-9  # half-way to 0 from the low tail
        assert not np.any(stats[key] < low)
    assert stats["brightness"].max() < t["brightness_max"] < 255
    assert 255 - t["brightness_max"] >= 0.5 * (255 - np.percentile(stats["brightness"], 99.5)) - 1e-9
    assert t["min_side"] == 112  # half the model input caps half the training images' 450 px
    assert pixel_thresholds(stats, np.full(1000, 150.0), 128)["min_side"] == 64


def test_non_lesion_corpus_is_varied_rgb():
    mod = _corpus_module()
    images = mod.non_lesion_images(seed=1, scale=0.1, photo_variants=False)
    families = {name.split("/")[0] for name, _ in images}
    assert {"document", "screenshot", "noise", "flat", "gradient", "pattern", "skimage"} <= families
    for name, rgb in images:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name


# ------------------------------------------------------------------ a gate fitted on a copy of the bundled model


@pytest.fixture(scope="session")
def ham_images():
    test = load_set(ham10000_or_skip() / "labels.csv", split="test")
    return [load_image(p) for p in test.paths[::76][:20]]


@pytest.fixture(scope="session")
def gated_folder(tmp_path_factory):
    labels = ham10000_or_skip() / "labels.csv"
    folder = copy_model_folder(BUNDLED_MODEL, tmp_path_factory.mktemp("gated") / "model")
    ModelFolder.open(folder).update(quality=None)  # whatever the bundled model carries, fit a fresh gate
    train = load_set(labels, split="train")
    val = load_set(labels, split="val")
    train = train.subset(range(0, len(train), max(1, len(train) // 200)))
    val = val.subset(range(0, len(val), max(1, len(val) // 100)))
    fit_quality_gate(folder, train, val, cache_dir=tmp_path_factory.mktemp("cache"), log=lambda *_: None)
    return folder


@pytest.fixture(scope="session")
def gated(gated_folder):
    return load_model(gated_folder)


@pytest.fixture(scope="session")
def ungated(tmp_path_factory):
    folder = copy_model_folder(BUNDLED_MODEL, tmp_path_factory.mktemp("ungated") / "model")
    ModelFolder.open(folder).update(quality=None)
    (folder / QUALITY_FILE).unlink()
    return load_model(folder)


def _made_to_fail(check: str, rgb: np.ndarray) -> np.ndarray:
    x = rgb.astype(np.float32)
    if check == "too_small":
        return np.asarray(Image.fromarray(rgb).resize((40, 30), Image.BILINEAR))
    if check == "too_dark":
        return np.uint8(x * 0.12)
    if check == "too_bright":
        return np.uint8(255 - (255 - x) * 0.08)
    if check == "low_contrast":
        return np.uint8(x.mean() + (x - x.mean()) * 0.05)
    if check == "no_colour":
        return np.repeat(np.uint8(x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, axis=2)
    if check == "blurred":
        return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(8)))
    raise AssertionError(check)


def test_gate_is_recorded_and_loads_with_the_model(gated, gated_folder):
    q = gated.config["quality"]
    gate = gated.quality_gate
    assert isinstance(gate, QualityGate)
    assert (gated_folder / q["file"]).is_file()
    assert gate.mean.shape == (q["feature_dim"],) and gate.precision.shape == (q["feature_dim"],) * 2
    assert 0 < q["brightness_min"] < q["brightness_max"] < 255
    assert q["contrast_min"] > 0 and q["sharpness_min"] > 0 and q["colour_min"] > 0 and q["min_side"] >= 16 and q["ood_max"] > 0
    assert q["val_ood_accepted"] >= 0.99  # the threshold's own rule, on the val images it was set on
    json.dumps(q)


def test_tampered_or_missing_statistics_refuse_to_load(gated_folder, tmp_path):
    bad = copy_model_folder(gated_folder, tmp_path / "tampered")
    with np.load(bad / QUALITY_FILE) as z:
        mean, precision = z["mean"].copy(), z["precision"]
    mean[0] += 1.0
    (bad / QUALITY_FILE).unlink()  # a new file: the copy's is a hard link
    np.savez(bad / QUALITY_FILE, mean=mean, precision=precision)
    with pytest.raises(ModelLoadError, match="quality"):
        load_model(bad)
    (bad / QUALITY_FILE).unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_model(bad)


@pytest.mark.parametrize("check", PIXEL_CHECKS)
def test_each_pixel_check_refuses_an_image_made_to_fail_it(gated, ham_images, check):
    pred = predict(_made_to_fail(check, ham_images[0]), model=gated)
    q = pred.quality
    assert q["checked"] and not q["accepted"]
    assert check in q["failed_checks"], q
    assert pred.malignant_probability is None and pred.label is None and pred.diagnosis is None
    assert q["issues"] and all(isinstance(s, str) and len(s) > 20 for s in q["issues"])
    json.dumps(pred.to_dict())


def test_real_dermoscopy_passes(gated, ham_images):
    preds = predict(ham_images, model=gated)
    pixel_failures = [p.quality["failed_checks"] for p in preds
                      if any(c in PIXEL_CHECKS for c in p.quality["failed_checks"])]
    assert not pixel_failures
    accepted = [p for p in preds if p.quality["accepted"]]
    assert len(accepted) >= len(preds) - 2  # the OOD threshold lets >= 99% of val through
    assert all(p.malignant_probability is not None and not p.quality["issues"] for p in accepted)


def test_black_field_of_view_border_is_not_underexposure(gated, ham_images):
    """Many dermatoscopes leave a black circle around the lit skin: that must not read as too dark."""
    rgb = ham_images[2]
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    ringed = np.uint8(rgb * ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.36 * min(h, w)) ** 2)[..., None])
    q = predict(ringed, model=gated, check_quality=True).quality
    assert not [c for c in q["failed_checks"] if c in PIXEL_CHECKS], q


def test_ood_score_separates_non_lesion_images(gated, ham_images):
    mod = _corpus_module()
    photos = dict(mod.package_photos())
    rng = np.random.default_rng(0)
    others = [photos[n] for n in ("skimage/astronaut", "skimage/coffee", "skimage/chelsea", "skimage/rocket")
              if n in photos] + [mod.document(rng), mod.screenshot(rng), mod.chart(rng)]
    real = [p.quality["ood_score"] for p in predict(ham_images, model=gated)]
    fake = [p.quality for p in predict(others, model=gated)]
    assert min(q["ood_score"] for q in fake) > np.median(real)
    assert sum("not_dermoscopy" in q["failed_checks"] for q in fake) >= len(fake) - 1


def test_check_quality_false_gives_the_raw_prediction(gated, ungated, ham_images):
    dark = _made_to_fail("too_dark", ham_images[1])
    gated_pred = predict(dark, model=gated)
    raw = predict(dark, model=gated, check_quality=False)
    reference = predict(dark, model=ungated)
    assert gated_pred.malignant_probability is None and gated_pred.quality["issues"]
    assert raw.malignant_probability is not None and raw.label in ("benign", "malignant")
    assert raw.quality["checked"] is False
    assert raw.malignant_probability == pytest.approx(reference.malignant_probability, abs=1e-5)
    assert raw.diagnosis == pytest.approx(reference.diagnosis, abs=1e-5)


def test_assess_is_cheap(gated, ham_images):
    gate = gated.quality_gate
    rgbs = (ham_images * 4)[:64]
    batch = np.stack([np.asarray(Image.fromarray(r).resize((gated.input_size,) * 2)) for r in rgbs])
    sizes = [(r.shape[1], r.shape[0]) for r in rgbs]
    feats = np.random.default_rng(0).normal(size=(64, gate.mean.shape[0])).astype(np.float32)
    gate.assess(sizes, batch, feats)
    start = time.perf_counter()
    for _ in range(3):
        gate.assess(sizes, batch, feats)
    per_image = (time.perf_counter() - start) / (3 * 64)
    assert per_image < 0.005, f"{per_image * 1e3:.2f} ms per image"  # ~0.2 ms on an idle core


def test_assess_rejects_mismatched_inputs(gated):
    gate = gated.quality_gate
    with pytest.raises(ValueError):
        gate.assess([(8, 8)], np.zeros((2, 16, 16, 3), np.uint8),
                    np.zeros((2, gate.mean.shape[0]), np.float32))
    with pytest.raises(ValueError):
        gate.assess([(8, 8)], np.zeros((1, 16, 16, 3), np.uint8), np.zeros((1, 3)))


def test_stats_computed_beside_the_engine_give_the_same_verdicts(gated, ham_images):
    gate = gated.quality_gate
    rgbs = ham_images[:4]
    batch = np.stack([np.asarray(Image.fromarray(r).resize((gated.input_size,) * 2)) for r in rgbs])
    batch[1] //= 8  # one too dark image, so the verdicts differ between images
    sizes = [(r.shape[1], r.shape[0]) for r in rgbs]
    feats = gated.engine.run(batch)[1]
    alone = gate.assess(sizes, batch, feats)
    assert alone == gate.assess(sizes, batch, feats, gate.pixel_stats(batch))
    assert not alone[1]["accepted"] and "too_dark" in alone[1]["failed_checks"]
    with pytest.raises(ValueError, match="one value per image"):
        gate.assess(sizes, batch, feats, gate.pixel_stats(batch[:2]))


def test_quality_evaluation_measures_other_clinics(tmp_path, monkeypatch):
    """The report's ``other_clinics`` entry: every row of that CSV assessed by the model's own
    gate, the share accepted equal to what predict() says image by image."""
    root = ham10000_or_skip()
    other_csv = root.parent / "isic2020-subset" / "labels.csv"
    if not other_csv.is_file():
        pytest.skip(f"{other_csv} not found")
    qe = _corpus_module()
    monkeypatch.setattr(qe, "non_lesion_images", lambda seed=0: [("flat-grey", np.full((300, 300, 3), 128, np.uint8))])
    ham_rows = (root / "labels.csv").read_text().splitlines()
    (tmp_path / "ham.csv").write_text("\n".join([ham_rows[0]] + [r for r in ham_rows[1:] if ",test," in r and ",malignant," in r][:2]
                                             + [r for r in ham_rows[1:] if ",test," in r and ",benign," in r][:2]) + "\n")
    (tmp_path / "images").symlink_to(root / "images")
    other_rows = other_csv.read_text().splitlines()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "images").symlink_to(other_csv.parent / "images")
    picked = [other_rows[0]] + [r for r in other_rows[1:] if ",malignant," in r][:2] + [r for r in other_rows[1:] if ",benign," in r][:4]
    (tmp_path / "other" / "labels.csv").write_text("\n".join(picked) + "\n")
    out = tmp_path / "report.json"
    assert qe.main(["--data", str(tmp_path / "ham.csv"), "--other-clinics", str(tmp_path / "other" / "labels.csv"),
                    "--output", str(out)]) == 0
    report = json.loads(out.read_text())["other_clinics"]
    model = load_model()
    verdicts = [predict(p, model).accepted for p in load_set(tmp_path / "other" / "labels.csv").paths]
    assert report["n"] == 6 and report["goal"] == ">= 0.97"
    assert report["accepted"] == pytest.approx(np.mean(verdicts), abs=1e-4)
    assert set(report["accepted_by_label"]) == {"benign", "malignant"}


def test_the_card_and_readme_quote_the_gate_report():
    """The gate's figures in MODEL_CARD and README are the ones in reports/quality_eval.json (the
    command the text names), so a re-run that changes them cannot leave the text behind."""
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    report = json.loads((repo / "reports" / "quality_eval.json").read_text())
    rates = [report["non_lesion"]["rejected"], report["real"]["accepted"], report["other_clinics"]["accepted"]]
    # The report keeps 4 decimals: either rounding of its last half-unit is the same measurement.
    figures = [{f"{100 * (r + d):.1f}%" for d in (-5e-5, 5e-5)} for r in rates]
    for doc in ("MODEL_CARD.md", "README.md"):
        text = (repo / doc).read_text()
        missing = [sorted(f) for f in figures if not any(x in text for x in f)]
        assert not missing, f"{doc} does not quote {missing} from reports/quality_eval.json"
