"""``skinmole evaluate --data labels.csv --split test [--model SOURCE] --output DIR [--update-config]``:
evaluate a model on a labelled set.

Writes DIR/metrics.json (per-source rows under ``by_source`` when the set names its sources),
DIR/predictions.csv and the PNG plots (roc, pr, confusion_binary, confusion_7class, reliability), and
prints a summary. ``--update-config`` also writes the summary into the model folder's config under
``metrics[<split>]`` and copies the plots into its ``plots/`` folder (local model folders only; the
weights and their sha256 are untouched). Needs the ``[evaluate]`` extra. Exit 2 for bad data, a model
it cannot load or a missing extra.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

from . import positive_int


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Evaluate a model on a labelled set: metrics.json, "
                                "predictions.csv and plots.")
    p.add_argument("--data", required=True, help="a labelled CSV (image,label[,dx,split,...]) or a class-folder tree")
    p.add_argument("--split", default=None, help="rows of the CSV's 'split' column to use, e.g. test")
    p.add_argument("--model", default=None, help="model folder or Hub repo id ORG/NAME (default: the bundled model)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    p.add_argument("--output", required=True, help="folder for metrics.json, predictions.csv and the plots")
    p.add_argument("--name", default=None, help="key under the config's 'metrics' (default: --split, else the data's name)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUC interval")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--update-config", action="store_true",
                   help="write the summary into the (local) model folder's config and plots/")
    return p


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _write_predictions(path: Path, model, labelled, preds) -> None:
    """One row per scored image: its label, P(malignant), the model's label and the differential."""
    sub = labelled.subset(preds.index)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        dx_cols = model.class_names if preds.dx_probs is not None else []
        w.writerow(["image", "label", "dx", "p_malignant", "predicted"] + [f"p_{c}" for c in dx_cols])
        for j, i in enumerate(preds.index):
            pm = float(preds.p_malignant[j])
            row = [labelled.paths[i].name, labelled.labels[i], sub.dx[j] if sub.dx else "", f"{pm:.6f}",
                   model.head.label(pm)]
            row += [f"{v:.6f}" for v in (preds.dx_probs[j] if preds.dx_probs is not None else [])]
            w.writerow(row)


def main(argv=None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    from ..data import DatasetError, load_set
    from ..extras import require
    from ..model import BUNDLED_MODEL, ModelLoadError, load_model

    try:
        require("evaluate", "evaluation")
    except ImportError as exc:
        return _fail(str(exc))
    from .. import evaluation

    key = args.name or args.split or Path(args.data).stem
    if args.update_config and args.model is not None and not Path(args.model).expanduser().exists():
        return _fail(f"--update-config needs a local model folder; {args.model!r} is not one")
    try:
        labelled = load_set(args.data, split=args.split)
    except DatasetError as exc:
        return _fail(str(exc))
    try:
        model = load_model(args.model, revision=args.revision)
        model.engine  # noqa: B018 - build it now, so a broken model fails here with a clear message
    except (ModelLoadError, ImportError) as exc:
        return _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - e.g. a model.keras Keras cannot read
        return _fail(f"{args.model or BUNDLED_MODEL}: cannot load the model ({type(exc).__name__}: {exc})")

    print(f"evaluating {len(labelled)} images of {labelled.source} with {model.folder} ...", flush=True)
    preds = evaluation.predict_set(model, labelled, batch_size=args.batch_size)
    try:
        metrics = evaluation.metrics_for(model, labelled, preds, n_bootstrap=args.bootstrap, seed=args.seed)
    except ValueError as exc:
        return _fail(str(exc))
    metrics["split"] = key

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _write_predictions(out / "predictions.csv", model, labelled, preds)
    plots = evaluation.plot_metrics(metrics, out, title=key)
    print(evaluation.format_summary(metrics))
    print(f"wrote {out / 'metrics.json'}, {out / 'predictions.csv'} and {len(plots)} plots")

    if args.update_config:
        folder = model.folder
        entry = evaluation.summary(metrics, split=f"{labelled.source} (n={metrics['n']})")
        model.model_folder.update(metrics={**model.spec.metrics, key: entry})
        plot_dir = folder / "plots"
        plot_dir.mkdir(exist_ok=True)
        for png in plots:
            shutil.copy2(png, plot_dir / png.name)
        print(f"updated {folder / model.model_folder.config_file} metrics[{key!r}] and {plot_dir}")
    return 0
