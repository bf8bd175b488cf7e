"""``skinmole fit-quality --model FOLDER --data labels.csv``: add (or refit) the quality /
out-of-distribution gate of a model folder.

Uses the same train/val split as training (the CSV's ``split`` column, ``--val-data``, or the seeded
85/15 split recorded in the model's config), writes ``quality.npz`` and the config's ``quality``
entry into the model folder, and prints that entry. Exit 2 for bad data, a bad model or a missing extra.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Fit (or refit) the quality / out-of-distribution gate of a model folder.")
    p.add_argument("--model", required=True, help="model folder to add the gate to (modified in place)")
    p.add_argument("--data", required=True, help="the training data (CSV with a split column, or class folders)")
    p.add_argument("--val-data", default=None, help="separate validation set, if the model was trained with one")
    p.add_argument("--limit", type=int, default=None, help="at most N images per split (quick runs)")
    p.add_argument("--cache-dir", default=".cache", help="pixel cache folder (default .cache)")
    return p


def main(argv=None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    from ..extras import require

    try:
        require("train", "fitting the quality gate")
        from ..model import read_config
        from ..quality import fit_quality_gate
        from ..training import TrainOptions, split_sets

        config = read_config(Path(args.model))
        seed = int(config.get("training", {}).get("seed", 42))
        opts = TrainOptions(data=args.data, output=args.model, val_data=args.val_data, limit=args.limit, seed=seed)
        train_set, val_set = split_sets(opts)
        entry = fit_quality_gate(args.model, train_set, val_set, cache_dir=args.cache_dir)
    except (ValueError, ImportError, OSError) as exc:  # DatasetError and ModelLoadError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in entry.items() if k != "train_stats"}, indent=2))
    return 0
