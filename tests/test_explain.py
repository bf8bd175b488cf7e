"""Grad-CAM (skinmole.explain) and the overlay helper, on the bundled model and sample images."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

import skinmole
from skinmole.explain import Heatmap
from skinmole.sample_images import sample_path, sample_paths


@pytest.fixture(scope="module")
def model():
    return skinmole.load_model()  # the bundled model, loaded once per process


@pytest.fixture(scope="module")
def heatmaps(model):
    return [skinmole.explain(p, model) for p in sample_paths()]


def test_heatmap_has_the_original_image_shape_finite_and_in_range(model, heatmaps):
    for path, heat in zip(sample_paths(), heatmaps):
        rgb = skinmole.load_image(path)
        assert heat.shape == rgb.shape[:2], path.name
        assert heat.dtype == np.float32 and isinstance(heat, Heatmap)
        assert np.all(np.isfinite(heat))
        assert heat.min() >= 0.0 and heat.max() <= 1.0


def test_heatmap_shape_follows_odd_sizes_and_input_kinds(model):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(37, 53), dtype=np.uint8)  # 2-D array: grey image, not square
    heat = skinmole.explain(gray, model)
    assert heat.shape == (37, 53)
    assert np.all(np.isfinite(heat)) and 0.0 <= heat.min() and heat.max() <= 1.0
    data = sample_paths()[0].read_bytes()
    assert skinmole.explain(data, model).shape == skinmole.load_image(data).shape[:2]


def test_heatmap_differs_between_images_and_is_deterministic(model, heatmaps):
    distinct = {h.tobytes() for h in heatmaps}
    assert len(distinct) > 1, "every sample image gave the same heatmap"
    again = skinmole.explain(sample_paths()[0], model)
    np.testing.assert_array_equal(again, heatmaps[0])


def test_gradcam_target_is_the_reported_malignant_probability(model):
    """The differentiated score is log P(malignant) exactly as predict() reports it."""
    from skinmole.explain import _grad_model, _malignant_score

    path = sample_paths()[3]
    x = skinmole.to_model_input(skinmole.load_image(path), model.input_size)[None].astype(np.float32)
    _, logits = _grad_model(model)(x, training=False)
    score = float(np.asarray(_malignant_score(logits, model))[0])
    p = skinmole.predict(path, model, check_quality=False).malignant_probability
    if logits.shape[-1] == 1:
        assert 1 / (1 + np.exp(-score / model.temperature)) == pytest.approx(p, rel=1e-4)
    else:
        assert np.exp(score) == pytest.approx(p, rel=1e-4)


@pytest.fixture(scope="module")
def binary_model(tmp_path_factory):
    """A tiny untrained one-logit model folder (the binary-head branch), built in seconds."""
    from skinmole.architectures import build
    from skinmole.model import save_model_folder

    folder = tmp_path_factory.mktemp("binary_model")
    config = {"format_version": 1, "name": "binary-test", "version": "0", "architecture": "simple-cnn",
              "input_size": 32, "class_names": ["benign", "malignant"], "malignant_classes": ["malignant"],
              "threshold": 0.5, "temperature": 1.7}
    with warnings.catch_warnings():  # Keras' own numpy-2 DeprecationWarning while building weights
        warnings.simplefilter("ignore", DeprecationWarning)
        save_model_folder(folder, build("simple-cnn", 32, 1), config)
    return skinmole.load_model(folder)


def test_binary_head_heatmap_and_target_is_the_logit(binary_model):
    from skinmole.explain import _grad_model, _malignant_score

    path = sample_paths()[0]
    heat = skinmole.explain(path, binary_model)
    assert heat.shape == skinmole.load_image(path).shape[:2]
    assert np.all(np.isfinite(heat)) and 0.0 <= heat.min() and heat.max() <= 1.0
    x = skinmole.to_model_input(skinmole.load_image(path), 32)[None].astype(np.float32)
    _, logits = _grad_model(binary_model)(x, training=False)
    score = float(np.asarray(_malignant_score(logits, binary_model))[0])
    assert score == pytest.approx(float(np.asarray(logits)[0, 0]))
    p = skinmole.predict(path, binary_model, check_quality=False).malignant_probability
    assert 1 / (1 + np.exp(-score / binary_model.temperature)) == pytest.approx(p, rel=1e-4)


def test_size_gives_the_map_at_that_size(model):
    heat = skinmole.explain(sample_paths()[4], model, size=(64, 48))
    assert heat.shape == (48, 64) and heat.dtype == np.float32
    full = skinmole.explain(sample_paths()[4], model)
    assert heat.stands_out == full.stands_out and heat.peak_log_odds == full.peak_log_odds


def test_weak_map_is_flagged_and_stays_faint(model):
    """The bundled melanoma sample: its brightest cell moves the malignant log-odds by ~0.006, so no
    region stands out and the map is not stretched to a saturated blob; the bcc sample's map does
    stand out and reaches 1 at its peak."""
    from skinmole.explain import MIN_LOG_ODDS_SHARE

    mel = skinmole.explain(sample_path("mel"), model)
    assert not mel.stands_out and mel.peak_log_odds < MIN_LOG_ODDS_SHARE
    assert mel.max() <= mel.peak_log_odds / MIN_LOG_ODDS_SHARE + 1e-6 < 0.5
    bcc = skinmole.explain(sample_path("bcc"), model)
    assert bcc.stands_out and bcc.peak_log_odds >= MIN_LOG_ODDS_SHARE
    assert bcc.max() == pytest.approx(1.0, abs=0.02)


def test_peak_is_the_brightest_cells_share_of_the_malignant_log_odds(model):
    """Behind global average pooling the raw Grad-CAM cells add up to the linearised score (log P):
    the map's sum equals the gradient-weighted feature sum, and the peak is that cell's value
    divided by 1 - P (d log-odds / d log P)."""
    from skinmole.explain import _cam_function

    path = sample_path("akiec")
    x = skinmole.to_model_input(skinmole.load_image(path), model.input_size)[None].astype(np.float32)
    cam, score = _cam_function(model)(x)
    p = float(np.exp(np.asarray(score)[0]))
    assert p == pytest.approx(skinmole.predict(path, model, check_quality=False).malignant_probability, rel=1e-4)
    heat = skinmole.explain(path, model)
    assert heat.peak_log_odds == pytest.approx(float(np.asarray(cam).max()) / (1 - p), rel=1e-4)


def test_heatmap_is_an_array_wherever_one_was():
    heat = Heatmap(np.array([[0.0, 0.5], [1.0, 0.25]]), True, 0.3)
    assert heat.dtype == np.float32 and heat.stands_out and heat.peak_log_odds == pytest.approx(0.3)
    assert heat[0].stands_out and type(np.asarray(heat)) is np.ndarray
    assert float(heat.max()) == 1.0


def test_bad_input_is_a_typed_error(model):
    with pytest.raises(skinmole.InvalidImageError):
        skinmole.explain(b"not an image at all", model)


def test_overlay_shape_dtype_and_blend(heatmaps):
    path = sample_paths()[0]
    rgb = skinmole.load_image(path)
    out = skinmole.overlay(rgb, heatmaps[0])
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert not np.array_equal(out, rgb)
    np.testing.assert_array_equal(skinmole.overlay(rgb, heatmaps[0], alpha=0.0), rgb)
    assert skinmole.overlay(path, heatmaps[0]).shape == rgb.shape  # any load_image source
    with pytest.raises(ValueError, match="shape"):
        skinmole.overlay(rgb, heatmaps[0][:-1])
    with pytest.raises(ValueError, match="alpha"):
        skinmole.overlay(rgb, heatmaps[0], alpha=1.5)


def test_overlay_uses_viridis_end_to_end_and_blends_every_row():
    """Colour-blind-safe and perceptually uniform by default: 0 is viridis' dark blue-purple, 1 its
    yellow; a tall image is blended in row blocks without a seam."""
    from matplotlib import colormaps

    rgb = np.full((700, 3, 3), 200, dtype=np.uint8)
    heat = np.zeros((700, 3), dtype=np.float32)
    heat[:, 2] = 1.0
    out = skinmole.overlay(rgb, heat, alpha=1.0)
    low, high = (np.rint(np.array(colormaps["viridis"](v)[:3]) * 255).astype(np.uint8) for v in (0.0, 1.0))
    assert (out[:, 0] == low).all() and (out[:, 2] == high).all()
    half = skinmole.overlay(rgb, heat, alpha=0.5)
    np.testing.assert_array_equal(half[:, 2], np.rint(0.5 * 200 + 0.5 * high.astype(np.float32)).astype(np.uint8)[None].repeat(700, 0))


def test_import_skinmole_does_not_import_tensorflow():
    code = "import skinmole, sys; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
