"""The opt-in int8 engine: ``skinmole quantise`` builds ``model-int8.onnx`` into a model folder (sha256
and measured agreement in the config), ``engine="onnx-int8"`` loads it checked, and its answers stay
close to the float engine's. On the tiny model folder; no timings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import skinmole
from skinmole.engines import run_in_batches
from skinmole.errors import ModelLoadError
from skinmole.quantisation import INT8_FILE, Recipe, quantise_model_folder

from conftest import TINY_SIZE
from helpers import config_path, copy_model_folder, edit_config, tamper

pytest.importorskip("onnx", reason="quantisation needs the 'onnx' package (train/dev extra)")

# The tiny model's P(malignant) is near its float value within this (int8 rounding of an untrained net).
MAX_DP = 0.05


def pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def int8_folder(tiny_folder, tmp_path_factory):
    """A copy of the tiny folder with an int8 model built by ``quantise_model_folder``."""
    folder = copy_model_folder(tiny_folder, tmp_path_factory.mktemp("int8") / "tiny")
    y = np.array([0, 1] * 10)
    quantise_model_folder(folder, pixels(32, 0), pixels(20, 1), y, recipe=Recipe(calibration_images=32),
                          split="random pixels (20 images)")
    return folder


def test_the_int8_file_is_recorded_with_its_sha256_and_agreement(int8_folder):
    config = json.loads(config_path(int8_folder).read_text())
    assert config["int8"]["file"] == INT8_FILE
    assert INT8_FILE in config["sha256"]
    agreement = config["int8"]["agreement"]
    assert agreement["n"] == 20 and 0 <= agreement["labels_flipped"] <= 20
    assert 0 <= agreement["p99_abs_dp"] <= agreement["max_abs_dp"] <= MAX_DP
    assert agreement["roc_auc_float"] is not None and agreement["roc_auc_int8"] is not None
    assert 0 <= agreement["ood_verdicts_changed"] <= 20  # the gate read the int8 features too
    assert config["int8"]["recipe"]["calibration_images"] == 32
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8_folder / INT8_FILE)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantised, not a copy of model.onnx


def test_int8_engine_gives_logits_and_features_close_to_float(int8_folder):
    float_model = skinmole.load_model(int8_folder)
    int8_model = skinmole.load_model(int8_folder, engine="onnx-int8")
    assert int8_model.engine.name == "onnx-int8" and float_model.engine.name == "onnx"
    x = pixels(8, 2)
    f_logits, f_features = run_in_batches(float_model.engine, x)
    i_logits, i_features = run_in_batches(int8_model.engine, x)
    assert i_logits.shape == f_logits.shape and i_features.shape == f_features.shape
    assert not np.array_equal(i_logits, f_logits)
    dp = np.abs(int8_model.head.malignant_probability(i_logits) - float_model.head.malignant_probability(f_logits))
    assert dp.max() <= MAX_DP
    scale = np.abs(f_features).max()
    assert np.abs(i_features - f_features).max() <= 0.1 * scale


def test_predict_with_the_int8_engine_keeps_the_gate(int8_folder, tmp_path):
    path = tmp_path / "mole.png"
    Image.fromarray(pixels(1, 3)[0]).resize((96, 96)).save(path)
    float_answer = skinmole.predict(path, model=skinmole.load_model(int8_folder))
    int8_answer = skinmole.predict(path, model=skinmole.load_model(int8_folder, engine="onnx-int8"))
    assert abs(int8_answer.malignant_probability - float_answer.malignant_probability) <= MAX_DP
    assert int8_answer.quality["ood_score"] is not None  # the gate ran on the int8 engine's features


def test_auto_stays_the_float_engine(int8_folder):
    assert skinmole.load_model(int8_folder).engine.name == "onnx"


def test_a_tampered_int8_file_is_refused(int8_folder, tmp_path):
    folder = copy_model_folder(int8_folder, tmp_path / "m")
    tamper(folder / INT8_FILE)
    with pytest.raises(ModelLoadError, match="sha256 of model-int8.onnx"):
        skinmole.load_model(folder, engine="onnx-int8")


def test_a_missing_int8_model_is_a_clear_error(tiny_folder):
    with pytest.raises(ModelLoadError, match="no int8 model; build one with: skinmole quantise"):
        skinmole.load_model(tiny_folder, engine="onnx-int8")


def test_an_unknown_engine_is_refused(tiny_folder):
    with pytest.raises(ValueError, match="engine must be one of"):
        skinmole.load_model(tiny_folder, engine="int4")


@pytest.mark.parametrize("change, field", [
    (lambda c: c["int8"]["agreement"].update(labels_flipped=-1), "labels_flipped"),
    (lambda c: c["int8"]["agreement"].update(p99_abs_dp="small"), "p99_abs_dp"),
    (lambda c: c["int8"].update(file="../model-int8.onnx"), "file"),
    (lambda c: c["sha256"].pop("model-int8.onnx"), "no digest recorded for model-int8.onnx"),
])
def test_the_int8_config_is_validated(int8_folder, tmp_path, change, field):
    folder = copy_model_folder(int8_folder, tmp_path / "m")
    edit_config(folder, change)
    with pytest.raises(ModelLoadError, match=field):
        skinmole.load_model(folder)


def class_tree(root, seed: int):
    for i, label in enumerate(["benign", "malignant"] * 6):
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels(1, seed + i)[0]).save(root / label / f"{seed}-{i}.png")
    return root


def test_cli_quantise_then_predict_with_the_int8_engine(tiny_folder, tmp_path, capsys):
    from skinmole.cli import main

    folder = copy_model_folder(tiny_folder, tmp_path / "m")
    train, val = class_tree(tmp_path / "train", 100), class_tree(tmp_path / "val", 200)
    assert main(["quantise", str(folder), "--calibration", str(train), "--validation", str(val),
                 "--cache", str(tmp_path / "cache")]) == 0
    assert "12 images" in capsys.readouterr().out
    assert skinmole.load_model(folder, engine="onnx-int8").engine.name == "onnx-int8"
    images = sorted(str(p) for p in val.rglob("*.png"))[:3]
    assert main(["predict", *images, "--json", "--model", str(folder), "--engine", "onnx-int8"]) == 0
    int8_lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["predict", *images, "--json", "--model", str(folder)]) == 0
    float_lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in int8_lines] == images
    for a, b in zip(int8_lines, float_lines):
        assert abs(a["malignant_probability"] - b["malignant_probability"]) <= MAX_DP


def test_cli_engine_onnx_int8_without_an_int8_model_is_one_line(tiny_folder, tmp_path, capsys):
    from skinmole.cli import main

    path = tmp_path / "mole.png"
    Image.fromarray(pixels(1, 4)[0]).save(path)
    assert main(["predict", str(path), "--model", str(tiny_folder), "--engine", "onnx-int8"]) == 2
    assert "skinmole quantise" in capsys.readouterr().err


def test_quantise_refuses_overlapping_calibration_and_validation(tiny_folder, tmp_path, capsys):
    from skinmole.cli import main

    folder = copy_model_folder(tiny_folder, tmp_path / "m")
    tree = class_tree(tmp_path / "same", 300)
    assert main(["quantise", str(folder), "--calibration", str(tree), "--validation", str(tree)]) == 1
    assert "overlap" in capsys.readouterr().err
    assert not (folder / INT8_FILE).exists()


def test_score_workers_use_the_int8_engine(int8_folder, tmp_path):
    pytest.importorskip("pyarrow")
    from skinmole.commands.score import parser
    from skinmole.score import ScoreBatches

    assert parser().parse_args(["archive", "-o", "out.parquet", "--engine", "onnx-int8"]).engine == "onnx-int8"
    path = tmp_path / "mole.png"
    Image.fromarray(pixels(1, 5)[0]).save(path)
    worker = ScoreBatches(str(int8_folder), 2, engine="onnx-int8")
    assert worker.model.engine.name == "onnx-int8"
    row = worker({"path": np.array([str(path)], dtype=object)}).to_pylist()[0]
    expected = skinmole.predict(path, model=skinmole.load_model(int8_folder, engine="onnx-int8"))
    assert row["malignant_probability"] == pytest.approx(expected.malignant_probability, abs=1e-6)
    # The row names the file whose numbers it holds: the int8 model, not the float weights.
    assert row["model_sha256"] == json.loads(config_path(int8_folder).read_text())["sha256"][INT8_FILE]
    assert row["model_sha256"] != skinmole.load_model(int8_folder).weights_sha256


def test_a_float_score_output_is_not_resumed_with_the_int8_engine(int8_folder, tmp_path):
    """Rows of the float engine and of the int8 engine never end up mixed in one output."""
    pytest.importorskip("pyarrow")
    from skinmole.score import PartWriter, ScoreBatches, ScoreError, output_schema, parts_folder, score

    paths = []
    for i in range(2):
        paths.append(tmp_path / f"mole{i}.png")
        Image.fromarray(pixels(1, 10 + i)[0]).save(paths[-1])
    out = tmp_path / "scores.parquet"
    writer = PartWriter(parts_folder(out), output_schema(skinmole.load_model(int8_folder).class_names))
    writer.add(ScoreBatches(str(int8_folder), 2)({"path": np.array([str(paths[0])], dtype=object)}))
    writer.flush()
    with pytest.raises(ScoreError, match="another model"):
        score(paths[1], out, model=str(int8_folder), engine="onnx-int8")


def test_re_exporting_model_onnx_drops_the_stale_int8_record(int8_folder, tiny_keras_model, tmp_path):
    from skinmole.onnx_export import export_model_folder

    folder = copy_model_folder(int8_folder, tmp_path / "m")
    export_model_folder(folder, tiny_keras_model)
    assert "int8" not in json.loads(config_path(folder).read_text())
    with pytest.raises(ModelLoadError, match="no int8 model"):
        skinmole.load_model(folder, engine="onnx-int8")


def test_a_new_folder_from_a_config_with_int8_does_not_inherit_it(int8_folder, tiny_keras_model, tmp_path):
    from skinmole.model import read_config
    from skinmole.model_folder import ModelFolder

    config = read_config(int8_folder)
    assert config["int8"]["file"] == INT8_FILE
    assert ModelFolder.create(tmp_path / "new", tiny_keras_model, config).config.int8 is None


def test_quantise_without_onnx_names_the_extra(monkeypatch, tiny_folder, capsys):
    import sys

    from skinmole.cli import main

    monkeypatch.setitem(sys.modules, "onnx", None)  # looks uninstalled
    assert main(["quantise", str(tiny_folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'skinmole[train]'" in err
