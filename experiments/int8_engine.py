"""Experiment: would an int8 ONNX model be a faster engine that gives the same answers?

Question: ONNX Runtime's int8 quantisation of the bundled model: how much faster, and how far do
    P(malignant), ROC AUC and the labels at the threshold move?
Date: 2026-11-27 (re-measured the same day with the final serving path).
Command: python experiments/int8_engine.py [--model FOLDER] [--split val]
    [--output reports/int8_experiment.json]
Answer: 1,372 img/s against 529 for float32 (validation split, 1,494 images), but P(malignant)
    moved by up to 0.148 (median 0.0045) and 32 labels flipped at the threshold (ROC AUC 0.9116
    against 0.9120). Not shipped: the serving engine must give Keras' answers within 1e-4
    (README "Speed").

Method: quantises the model folder's ``model.onnx`` (ONNX Runtime static QDQ quantisation, per-channel int8
weights, uint8 activations calibrated on 256 training images) into a temporary file, then compares
it with the float engine on one split (validation by default: the test split is for reporting):
images per second on the same 256 arrays (interleaved rounds), the largest and the median change in
P(malignant), ROC AUC, and how many labels flip at the model's threshold. Nothing is shipped: the
serving engine must match Keras within 1e-4. Needs the ``onnx`` package (dev extra).
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from skinmole import load_model  # noqa: E402
from skinmole.calibration import malignant_probability, probabilities  # noqa: E402
from skinmole.data import ham10000_labels, load_pixels, read_csv  # noqa: E402
from skinmole.engines import OnnxEngine, run_in_batches  # noqa: E402


def quantise(src: Path, dst: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"pixels": calibration[i:i + 16]} for i in range(0, len(calibration), 16)])

        def get_next(self):
            return next(self.batches, None)

    pre = dst.with_name("pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--split", default="val")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--output", default=None)
    args = p.parse_args()
    model = load_model(args.model)
    if not model.config.get("onnx_file"):
        raise SystemExit(f"{model.folder}: no ONNX file to quantise")
    labels = ham10000_labels()
    if labels is None:
        raise SystemExit("HAM10000 not found: set SKINMOLE_HAM10000")
    evaluated = read_csv(labels, split=args.split)
    x = load_pixels(evaluated, model.input_size, ".cache")
    calibration = load_pixels(read_csv(labels, split="train"), model.input_size, ".cache")[:256]

    with tempfile.TemporaryDirectory() as tmp:
        int8_path = Path(tmp) / "model-int8.onnx"
        quantise(model.folder / model.config["onnx_file"], int8_path, calibration)
        engines = {"float32": OnnxEngine(model.folder / model.config["onnx_file"]), "int8": OnnxEngine(int8_path)}
        p_mal = {}
        for name, engine in engines.items():
            logits = run_in_batches(engine, x)[0]
            p_mal[name] = malignant_probability(probabilities(logits, model.temperature), model.class_names,
                                                model.malignant_classes)
        timing = {name: [] for name in engines}
        batch = x[:256]
        for _ in range(args.repeats):
            for name, engine in engines.items():
                start = time.perf_counter()
                for i in range(0, len(batch), 64):
                    engine.run(batch[i:i + 64])
                timing[name].append(time.perf_counter() - start)

    diff = np.abs(p_mal["int8"] - p_mal["float32"])
    labels = {k: v >= model.threshold for k, v in p_mal.items()}
    result = {
        "model": str(model.folder),
        "split": f"{args.split} ({len(x)} images)",
        "images_per_s": {k: len(batch) / statistics.median(v) for k, v in timing.items()},
        "p_malignant_abs_difference": {"max": float(diff.max()), "median": float(np.median(diff)),
                                       "over_1e-4": float(np.mean(diff > 1e-4))},
        "roc_auc": {k: float(roc_auc_score(evaluated.y, v)) for k, v in p_mal.items()},
        "labels_flipped_at_threshold": int(np.sum(labels["int8"] != labels["float32"])),
    }
    print(json.dumps(result, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
