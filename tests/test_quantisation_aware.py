"""Quantisation-aware fine-tuning: the Keras twin of a QDQ model computes what ONNX Runtime's int8
engine computes, its weights go back into the same QDQ graph, and fine-tuning through the rounding
brings the int8 answers closer to the float model's. On the tiny model folder and random pixels."""

from __future__ import annotations

import numpy as np
import pytest

from skinmole.engines import OnnxEngine, run_in_batches
from skinmole.quantisation import Recipe, quantise_onnx

from conftest import TINY_SIZE

pytest.importorskip("onnx", reason="quantisation needs the 'onnx' package (train/dev extra)")
pytest.importorskip("keras", reason="fine-tuning needs keras (train extra)")


def pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def qdq(tiny_folder, tmp_path_factory):
    """(float ONNX path, its int8 QDQ copy) of the tiny model, calibrated on random pixels."""
    path = tmp_path_factory.mktemp("qat") / "int8.onnx"
    quantise_onnx(tiny_folder / "model.onnx", path, pixels(32, 0), Recipe(calibration_images=32))
    return tiny_folder / "model.onnx", path


def logit_step(path) -> float:
    """The quantisation step of the int8 model's logits output (its last DequantizeLinear)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    node = next(n for n in proto.graph.node if n.output[0] == "logits")
    assert node.op_type == "DequantizeLinear"
    return float(init[node.input[1]])


def test_the_twin_computes_what_the_int8_engine_computes(qdq):
    from skinmole.quantisation_aware import QuantisedGraph

    float_path, int8_path = qdq
    x = pixels(16, 1)
    twin_logits, twin_features = QuantisedGraph(int8_path, float_path).keras_model.predict(x.astype("f4"), verbose=0)
    int8_logits, int8_features = run_in_batches(OnnxEngine(int8_path), x)
    float_logits, _ = run_in_batches(OnnxEngine(float_path), x)
    step = logit_step(int8_path)
    # Integer kernels and the fake-quant twin round alike, up to a step where a value sits on a tie.
    assert np.abs(twin_logits - int8_logits).max() <= 3 * step
    assert np.abs(float_logits - int8_logits).max() > 0  # the int8 model really rounds
    assert twin_features.shape == int8_features.shape


def test_untrained_weights_written_back_give_the_same_int8_model(qdq):
    from skinmole.quantisation_aware import QuantisedGraph

    float_path, int8_path = qdq
    x = pixels(16, 2)
    rewritten = QuantisedGraph(int8_path, float_path).to_onnx()
    a, _ = run_in_batches(OnnxEngine(rewritten), x)
    b, _ = run_in_batches(OnnxEngine(int8_path), x)
    assert np.abs(a - b).max() <= logit_step(int8_path) + 1e-6


def test_fine_tuning_brings_the_int8_answers_towards_the_float_ones(qdq):
    from skinmole.quantisation_aware import QuantisedGraph, fine_tune

    float_path, int8_path = qdq
    train, probe = pixels(256, 3), pixels(64, 4)
    float_engine = OnnxEngine(float_path)
    teacher_logits, teacher_features = run_in_batches(float_engine, train)
    probe_float, _ = run_in_batches(float_engine, probe)
    graph = QuantisedGraph(int8_path, float_path)
    before = np.mean((run_in_batches(OnnxEngine(graph.to_onnx()), probe)[0] - probe_float) ** 2)
    losses = fine_tune(graph, train, teacher_logits, teacher_features, epochs=3, learning_rate=1e-5,
                       batch_size=32, log=lambda _: None)
    after = np.mean((run_in_batches(OnnxEngine(graph.to_onnx()), probe)[0] - probe_float) ** 2)
    assert losses[-1] < losses[0]
    assert after < 0.8 * before, (before, after)


def test_a_graph_with_an_unsupported_op_is_refused(qdq, tmp_path):
    import onnx

    from skinmole.quantisation_aware import QuantisedGraph

    float_path, int8_path = qdq
    proto = onnx.load(str(int8_path))
    node = next(n for n in proto.graph.node if n.op_type in ("Flatten", "Identity"))
    node.op_type = "Softsign"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(proto.SerializeToString())
    with pytest.raises(ValueError, match="Softsign is not supported"):
        QuantisedGraph(bad, float_path)


def test_quantise_model_folder_fine_tunes_when_the_recipe_says_so(tiny_folder, tmp_path):
    import json

    from skinmole.quantisation import INT8_FILE, quantise_model_folder

    from helpers import config_path, copy_model_folder

    folder = copy_model_folder(tiny_folder, tmp_path / "m")
    recipe = Recipe(calibration_images=32, fine_tune_epochs=1)
    with pytest.raises(ValueError, match="fine_tune_pixels"):
        quantise_model_folder(folder, pixels(32, 0), pixels(20, 1), recipe=recipe)
    plain = tmp_path / "plain.onnx"
    quantise_onnx(folder / "model.onnx", plain, pixels(32, 0), recipe)
    quantise_model_folder(folder, pixels(32, 0), pixels(20, 1), np.array([0, 1] * 10), recipe=recipe,
                          fine_tune_pixels=pixels(64, 5), log=lambda _: None)
    config = json.loads(config_path(folder).read_text())
    assert config["int8"]["recipe"]["fine_tune_epochs"] == 1
    x = pixels(8, 6)
    tuned, _ = run_in_batches(OnnxEngine(folder / INT8_FILE), x)
    untuned, _ = run_in_batches(OnnxEngine(plain), x)
    assert not np.array_equal(tuned, untuned)  # the fine-tuned weights are the ones in the file


def test_a_negative_number_of_fine_tuning_epochs_is_refused():
    with pytest.raises(ValueError, match="fine_tune_epochs"):
        Recipe(fine_tune_epochs=-1)


def test_cli_quantise_with_fine_tuning_records_it(tiny_folder, tmp_path, capsys):
    import json

    from skinmole.cli import main

    from helpers import config_path, copy_model_folder
    from test_quantisation import class_tree

    folder = copy_model_folder(tiny_folder, tmp_path / "m")
    train, val = class_tree(tmp_path / "train", 100), class_tree(tmp_path / "val", 200)
    assert main(["quantise", str(folder), "--calibration", str(train), "--validation", str(val),
                 "--fine-tune-epochs", "1", "--cache", str(tmp_path / "cache")]) == 0
    assert "quantisation-aware fine-tuning" in capsys.readouterr().out
    assert json.loads(config_path(folder).read_text())["int8"]["recipe"]["fine_tune_epochs"] == 1
    assert main(["quantise", str(folder), "--fine-tune-epochs", "-1", "--calibration", str(train),
                 "--validation", str(val)]) == 1
    assert "fine_tune_epochs must be >= 0" in capsys.readouterr().err
