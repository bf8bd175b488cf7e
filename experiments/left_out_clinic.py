"""Left-out clinic: does a training recipe judge the lesion, or the clinic?

Question: trained on the three Vienna collections only (HAM10000 train split, rosendahl left out),
how well does a recipe rank rosendahl's lesions (a clinic, camera and patient group it never saw),
and does the threshold chosen on Vienna validation keep its sensitivity there?
Protocol (issue 11): train with ``--exclude-sources rosendahl``; choose epochs, temperature and the
threshold on the Vienna val images; report rosendahl val and test, and the Vienna val per source.
Choices are made on rosendahl *val* and Vienna val; rosendahl test is reported, not tuned on.

    python experiments/left_out_clinic.py --name NAME [train options...]   (resumable: run it again)

Writes models/loc-NAME/ and reports/left-out-clinic/NAME.json; answers are in MODEL_CARD "What we tried".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from skinmole import evaluation  # noqa: E402
from skinmole.data import ham10000_labels, load_set  # noqa: E402
from skinmole import load_model  # noqa: E402


def evaluate_by_source(folder, labels, split: str) -> dict:
    """Every image of ``split`` (quality gate off), per source, at the model's own threshold."""
    model = load_model(folder)
    s = load_set(labels, split=split)
    preds = evaluation.predict_set(model, s)
    sub = s.subset(preds.index)
    return evaluation.metrics_by_source(sub.y, preds.p_malignant, sub.metadata["source"], model.threshold)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--left-out", default="rosendahl")
    p.add_argument("--evaluate-only", action="store_true", help="evaluate an existing models/loc-NAME")
    args, train_args = p.parse_known_args(argv)
    labels = ham10000_labels()
    folder = REPO / "models" / f"loc-{args.name}"
    started = time.time()
    if not args.evaluate_only:
        sys.path.insert(0, str(REPO / "scripts"))
        from train import main as train_main

        rc = train_main(["--data", str(labels), "--output", str(folder), "--exclude-sources", args.left_out, *train_args])
        if rc:
            return rc
    report = {
        "name": args.name,
        "command": "python experiments/left_out_clinic.py --name " + " ".join([args.name, *train_args]),
        "left_out": args.left_out,
        "train_seconds": round(time.time() - started, 1),
        "config_training": json.loads((folder / "config.json").read_text()).get("training", {}),
        "splits": {split: evaluate_by_source(folder, labels, split) for split in ("val", "test")},
    }
    out = REPO / "reports" / "left-out-clinic" / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for split, by_source in report["splits"].items():
        for src, m in by_source.items():
            print(f"{split:5s} {src:14s} n={m['n']:5d} mal={m['n_malignant']:4d} auc={m['roc_auc']} "
                  f"sens={m['sensitivity']} spec={m['specificity']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
