"""Experiment: does quantisation-aware fine-tuning bring the int8 engine's answers to the float engine's?

Question: post-training quantisation (experiments/int8_engine.py) flips 30-42 of 1,494 validation
    labels whatever the recipe: the activations' rounding, not only the weights'. If the int8 model's
    weights are fine-tuned through its rounding to give the float model's logits and features
    (skinmole.quantisation_aware: distillation on training images, activation scales kept), does it
    meet the goals against the float engine (<= 0.5% labels flipped, p99 |dP| <= 0.02, ROC AUC within
    0.002), and at what cost?
Command: python experiments/int8_qat.py [--model FOLDER] [--epochs 3] [--learning-rate 1e-5]
    [--feature-weight 0.1] [--cosine] [--output reports/int8_qat.json] [--save model-int8-qat.onnx]
    (run 1: the defaults; run 2: --epochs 6 --learning-rate 3e-5 --cosine; their reports kept as
    reports/int8_qat-run1.json and reports/int8_qat-run2.json)
Method: the chosen recipe's post-training part (quantisation.DEFAULT_RECIPE, its 300 calibration
    images) gives the QDQ graph and its activation scales; the weights start from the float model;
    fine-tuning on the other training images except a seeded probe of 500, which picks the epoch
    (p99 |dP| against the float engine); the validation split is only measured. Every number is ONNX Runtime running the
    written-back QDQ file, not the Keras twin.
Date: 2026-12-01, bundled lite0-128, validation split (1,494), AMD EPYC AVX2 without VNNI.
Answer: it halves the disagreement, not enough for the goals. From the post-training 42 flipped
    labels / p99 |dP| 0.103 / max 0.22: lr 1e-5, 3 epochs (reports/int8_qat-run1.json, 14 min),
    epoch 2 chosen on the probe: 19 flipped (1.3%), p99 0.050, max 0.091, AUC 0.9143 vs 0.9120,
    1 out-of-distribution verdict changed; epoch 3 no better (22, 0.050). lr 3e-5 with cosine decay,
    6 epochs (reports/int8_qat-run2.json, 26 min): 23-32 flips in epochs 2-4, then 17 / 0.048 at
    epoch 5 (chosen) and 18 / 0.053 at 6. Both runs level off near p99 0.05 (goal 0.02) and 17-19
    flips (goal 7): the activation scales stay those of the calibration, and the Keras twin and
    ONNX Runtime's integer kernels differ by about one logit step. `skinmole quantise` now fine-tunes
    2 epochs at 1e-5 by default (DEFAULT_RECIPE); the engine stays opt-in.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from skinmole import load_model  # noqa: E402
from skinmole.data import ham10000_labels, load_pixels, read_csv  # noqa: E402
from skinmole.engines import OnnxEngine, run_in_batches  # noqa: E402
from skinmole.quantisation import (DEFAULT_RECIPE, agreement, calibration_sample, cpu_description,  # noqa: E402
                                   gate_agreement, quantise_onnx)
from skinmole.quantisation_aware import QuantisedGraph, fine_tune  # noqa: E402

PROBE_IMAGES = 500
PTQ_RECIPE = DEFAULT_RECIPE.post_training()  # the fine-tuning is set here


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--cache", default=str(ROOT / ".cache"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cosine", action="store_true", help="decay the learning rate to 0 over the epochs (cosine)")
    p.add_argument("--feature-weight", type=float, default=0.1,
                   help="weight of the features' MSE beside the logits' (the features feed the quality gate)")
    p.add_argument("--train-images", type=int, default=None, help="fine-tune on this many (default: all but the probe)")
    p.add_argument("--output", default=str(ROOT / "reports" / "int8_qat.json"))
    p.add_argument("--save", default=None, help="write the chosen epoch's int8 ONNX file here")
    args = p.parse_args()
    started = time.monotonic()
    model = load_model(args.model, gate=False)
    gate = load_model(args.model).quality_gate
    labels = ham10000_labels()
    if labels is None:
        raise SystemExit("HAM10000 not found: set SKINMOLE_HAM10000")
    val, train = read_csv(labels, split="val"), read_csv(labels, split="train")
    calibration_index = calibration_sample(len(train), PTQ_RECIPE.calibration_images)
    rest = np.setdiff1d(np.arange(len(train)), calibration_index)
    probe_index = np.sort(np.random.default_rng(1).permutation(rest)[:PROBE_IMAGES])
    fit_index = np.setdiff1d(np.arange(len(train)), probe_index)[:args.train_images]
    x_val = load_pixels(val, model.input_size, args.cache)
    x_train = load_pixels(train, model.input_size, args.cache)  # once: the three sets below index it
    x_probe, x_fit, calibration = x_train[probe_index], x_train[fit_index], x_train[calibration_index]
    src = model.folder / model.config["onnx_file"]
    float_engine = OnnxEngine(src)
    val_float, val_float_features = run_in_batches(float_engine, x_val)
    probe_float, _ = run_in_batches(float_engine, x_probe)
    teacher_logits, teacher_features = run_in_batches(float_engine, x_fit)

    def measure(onnx_bytes: bytes, epoch: int) -> dict:
        engine = OnnxEngine(onnx_bytes)
        logits, features = run_in_batches(engine, x_val)
        out = {"epoch": epoch, "probe": agreement(probe_float, run_in_batches(engine, x_probe)[0], model.head),
               "val": agreement(val_float, logits, model.head, val.y)}
        if gate is not None:
            out["val"].update(gate_agreement(gate, val_float_features, features))
        v = out["val"]
        print(f"epoch {epoch}: val {v['labels_flipped']} flipped, p99 {v['p99_abs_dp']:.4f}, max {v['max_abs_dp']:.4f}, "
              f"AUC {v['roc_auc_float']:.4f} -> {v['roc_auc_int8']:.4f}; probe p99 {out['probe']['p99_abs_dp']:.4f} "
              f"({time.monotonic() - started:.0f} s)", flush=True)
        return out

    with tempfile.TemporaryDirectory() as tmp:
        ptq = Path(tmp) / "ptq.onnx"
        quantise_onnx(src, ptq, calibration, PTQ_RECIPE)
        graph = QuantisedGraph(ptq, src)
        files = {0: graph.to_onnx()}
        epochs = [measure(files[0], 0)]

        def after_epoch(epoch: int) -> None:
            files[epoch] = graph.to_onnx()
            epochs.append(measure(files[epoch], epoch))

        losses = fine_tune(graph, x_fit, teacher_logits, teacher_features, epochs=args.epochs,
                           learning_rate=args.learning_rate, batch_size=args.batch_size,
                           feature_weight=args.feature_weight, cosine=args.cosine, after_epoch=after_epoch)
    chosen = min(epochs, key=lambda e: e["probe"]["p99_abs_dp"])
    goals = {"labels_flipped_max": int(0.005 * len(x_val)), "p99_abs_dp_max": 0.02, "roc_auc_within": 0.002}
    v = chosen["val"]
    result = {
        "model": str(model.folder), "cpu": cpu_description(), "recipe": PTQ_RECIPE.to_dict(),
        "fine_tuning": {"images": len(x_fit), "probe_images": len(x_probe), "epochs": args.epochs,
                        "learning_rate": args.learning_rate, "batch_size": args.batch_size,
                        "feature_weight": args.feature_weight, "cosine": args.cosine, "loss": losses,
                        "target": "float model's logits and features (MSE)"},
        "goals": goals, "epochs": epochs, "chosen_epoch": chosen["epoch"],
        "meets_goals": bool(v["labels_flipped"] <= goals["labels_flipped_max"] and v["p99_abs_dp"] <= 0.02
                            and abs(v["roc_auc_int8"] - v["roc_auc_float"]) <= 0.002),
        "seconds": round(time.monotonic() - started),
    }
    if args.save:
        Path(args.save).write_bytes(files[chosen["epoch"]])
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"chosen epoch {chosen['epoch']} (probe); meets goals: {result['meets_goals']}; wrote {args.output}")


if __name__ == "__main__":
    main()
