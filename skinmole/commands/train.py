"""``skinmole train --data labels.csv --output models/NAME [...]``: train a model folder.

Every field of ``skinmole.training.TrainOptions`` is an option (``--input-size``, ``--no-pretrained``,
...), so a new training setting needs no change here. Exit 2 for bad data or a missing extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    from ..training import TrainOptions

    p = argparse.ArgumentParser(prog=prog, description="Train a model folder on a labelled set (a CSV or one folder per class).")
    for f in dataclasses.fields(TrainOptions):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif f.default is dataclasses.MISSING:
            p.add_argument(flag, required=True)
        else:
            kind = {"int": int, "float": float, "int | None": int}.get(str(f.type), str)
            p.add_argument(flag, type=kind, default=f.default)
    return p


def main(argv=None, prog: str | None = None) -> int:
    from ..extras import require
    from ..training import TrainOptions, train

    args = parser(prog).parse_args(argv)
    try:
        require("train", "training")
        train(TrainOptions(**vars(args)))
    except (ValueError, ImportError, OSError) as exc:  # DatasetError, ModelLoadError, MissingExtraError, a missing file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
