"""The lent-GPU path: the pack that travels (size limit, ZIP_STORED archive with labels.csv and its
images) and ``--no-finish`` training, which keeps the best validation epoch without scikit-learn."""

from __future__ import annotations

import csv
import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, ham10000_or_skip


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def device_pack():
    return _module("device_pack")


def _fake_data(root: Path, n: int = 12) -> Path:
    """A tiny ham10000/ folder: noisy 60x45 JPEGs, labels.csv with train, val and test rows."""
    images = root / "ham10000" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with (root / "ham10000" / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "dx", "split", "source"])
        for i in range(n):
            name = f"ISIC_{i:07d}.jpg"
            Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)).save(images / name, quality=95)
            w.writerow([name, "malignant" if i % 3 == 0 else "benign", "mel" if i % 3 == 0 else "nv",
                        ("train", "val", "test")[i % 3], "rosendahl" if i % 2 else "vidir_modern"])
    return root


def _pack(device_pack, tmp_path, limit, **kw):
    return device_pack.pack(tmp_path / "pack", _fake_data(tmp_path / "data"), [], False, {"train", "val"}, "3.12",
                            wheels=False, limit=limit, checkout=0, **kw)


def test_the_archive_is_stored_and_holds_labels_and_every_listed_image(device_pack, tmp_path):
    manifest = _pack(device_pack, tmp_path, limit=64 * device_pack.MIB)
    archive = tmp_path / "pack" / "data" / "ham10000.zip"
    with zipfile.ZipFile(archive) as z:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in z.infolist())
        rows = list(csv.DictReader(z.read("labels.csv").decode().splitlines()))
        names = set(z.namelist())
        original = (tmp_path / "data" / "ham10000" / "images" / rows[0]["image"]).read_bytes()
        assert z.read(f"images/{rows[0]['image']}") == original  # it fits: the files as they are
    assert {r["split"] for r in rows} == {"train", "val"} and len(rows) == 8  # the test split stays here
    assert names == {"labels.csv"} | {f"images/{r['image']}" for r in rows}
    assert manifest["data"][0]["encoding"] == "original files"
    assert json.loads((tmp_path / "pack" / "manifest.json").read_text())["data"][0]["images"] == 8


def test_images_are_re_encoded_only_when_the_originals_do_not_fit(device_pack, tmp_path):
    data = _fake_data(tmp_path / "probe")
    originals = sum(p.stat().st_size for p in (data / "ham10000" / "images").iterdir())
    # Noise JPEGs at quality 95 are large; WebP 90 of the same noise is smaller, so this limit takes WebP.
    manifest = _pack(device_pack, tmp_path, limit=device_pack.MARGIN + originals * 8 // 12 - 1)
    assert manifest["data"][0]["encoding"].startswith("WebP")
    with zipfile.ZipFile(tmp_path / "pack" / "data" / "ham10000.zip") as z:
        rows = list(csv.DictReader(z.read("labels.csv").decode().splitlines()))
        assert all(r["image"].endswith(".webp") and f"images/{r['image']}" in z.namelist() for r in rows)
        from skinmole.images import load_image

        assert load_image(z.read(f"images/{rows[0]['image']}")).shape == (45, 60, 3)


def test_a_pack_over_the_limit_is_refused_and_removed(device_pack, tmp_path):
    with pytest.raises(device_pack.PackTooLarge, match="does not fit"):
        _pack(device_pack, tmp_path, limit=device_pack.MARGIN + 100)
    assert not (tmp_path / "pack").exists()
    rc = device_pack.main(["--out", str(tmp_path / "cli"), "--data", str(tmp_path / "data"), "--architectures", "",
                           "--no-wheels", "--limit-mib", "0.5"])
    assert rc == 2 and not (tmp_path / "cli").exists()


def test_run_specs_parse_and_bad_names_are_refused():
    device_run = _module("device_run")
    assert device_run.parse_run("loc-a_1: --input-size 192 --augment camera") == ("loc-a_1", ["--input-size", "192", "--augment", "camera"])
    with pytest.raises(ValueError, match="NAME"):
        device_run.parse_run("../x: --epochs 1")


def test_no_finish_keeps_the_best_validation_epoch_and_its_predictions(tmp_path):
    """--no-finish: model.keras of the best val epoch, the history and every epoch's val P(malignant),
    no model folder; the val AUC it chose by equals scikit-learn's on the saved predictions."""
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    from skinmole.training import TrainOptions, train

    root = ham10000_or_skip()
    out = train(TrainOptions(data=str(root / "labels.csv"), output=str(tmp_path / "run"), architecture="simple-cnn",
                             pretrained=False, limit=40, epochs=2, batch_size=16, input_size=32, finish=False,
                             resume=False, cache_dir=str(tmp_path / "cache"), verbose=0))
    assert (out / "model.keras").is_file() and not (out / "skinmole.json").exists()
    history = json.loads((out / "history.json").read_text())
    with np.load(out / "val_predictions.npz") as v:
        assert v["p_malignant"].shape == (2, len(v["y"])) and list(v["epoch"]) == [1, 2]
        assert len(v["image"]) == len(v["y"]) == 40
        for row, p in zip(history, v["p_malignant"]):
            assert row["val_auc"] == pytest.approx(roc_auc_score(v["y"], p), abs=1e-9)


def test_a_run_must_leave_out_what_the_pack_left_out(tmp_path):
    device_run = _module("device_run")
    labels = tmp_path / "labels.csv"
    opts = device_run.train_options("a", ["--exclude-sources", "rosendahl"], labels, tmp_path, [], {"rosendahl"})
    assert opts.exclude_sources is None  # already absent from the packed data
    assert device_run.recorded_options(opts)["exclude_sources"] == "rosendahl"  # finishing leaves it out again
    with pytest.raises(ValueError, match="--exclude-sources rosendahl"):
        device_run.train_options("b", ["--input-size", "192"], labels, tmp_path, [], {"rosendahl"})


def test_finishing_passes_on_what_the_run_trained_with_and_trains_no_epoch(tmp_path):
    device_run = _module("device_run")
    from skinmole.training import TrainOptions

    opts = TrainOptions(data="/device/labels.csv", output="/device/run", input_size=192, augment="camera",
                        epochs=20, resume=False, finish=False, exclude_sources="rosendahl", cache_dir="/tmp/c")
    init = tmp_path / "init.keras"
    assert device_run.finish_arguments(device_run.recorded_options(opts), init) == [
        "--input-size", "192", "--augment", "camera", "--init-weights", str(init), "--epochs", "0"]
