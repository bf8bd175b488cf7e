"""Experiment: does test-time augmentation help?

Question: is the validation ROC AUC of P(malignant) averaged over flips and 90-degree rotations
    better enough than a single view to make ``predict`` pay several model calls per image?
Date: 2026-11-27.
Command: python experiments/augmentation_at_prediction.py [--model SOURCE] [--split val]
Answer: no. Validation ROC AUC 0.912 -> 0.913 for a 4-6x slower prediction (MODEL_CARD.md,
    "What we tried"). Measured on validation only: the test split is for reporting.
"""

import argparse

import numpy as np
from sklearn.metrics import roc_auc_score

from skinmole import load_model
from skinmole.data import ham10000_labels, load_pixels, read_csv
from skinmole.engines import run_in_batches

VIEWS = {
    "original": lambda x: x,
    "flip left-right": lambda x: x[:, :, ::-1],
    "flip up-down": lambda x: x[:, ::-1],
    "rotate 180": lambda x: x[:, ::-1, ::-1],
    "rotate 90": lambda x: np.rot90(x, 1, (1, 2)),
    "rotate 270": lambda x: np.rot90(x, 3, (1, 2)),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=None)
    p.add_argument("--split", default="val")
    args = p.parse_args()
    model = load_model(args.model)
    labels = ham10000_labels()
    if labels is None:
        raise SystemExit("HAM10000 not found: set SKINMOLE_HAM10000")
    s = read_csv(labels, split=args.split)
    x = load_pixels(s, model.input_size, ".cache")
    scores = {}
    for name, view in VIEWS.items():
        v = np.ascontiguousarray(view(x))
        logits = run_in_batches(model.engine, v)[0]
        scores[name] = model.head.malignant_probability(logits)
        print(f"{args.split} ROC AUC, {name:16s} {roc_auc_score(s.y, scores[name]):.4f}")
    four = np.mean([scores[k] for k in list(VIEWS)[:4]], axis=0)
    print(f"{args.split} ROC AUC, mean of 4 flips   {roc_auc_score(s.y, four):.4f}")
    print(f"{args.split} ROC AUC, mean of 6 views   {roc_auc_score(s.y, np.mean(list(scores.values()), axis=0)):.4f}")


if __name__ == "__main__":
    main()
