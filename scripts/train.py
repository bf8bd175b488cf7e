"""Train a skinmole model: python scripts/train.py --data labels.csv --output models/NAME [...]"""

import argparse
import dataclasses
import sys

from skinmole.training import TrainOptions, train


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    for f in dataclasses.fields(TrainOptions):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif f.default is dataclasses.MISSING:
            p.add_argument(flag, required=True)
        else:
            kind = {"int": int, "float": float, "int | None": int}.get(str(f.type), str)
            p.add_argument(flag, type=kind, default=f.default)
    args = p.parse_args(argv)
    try:
        train(TrainOptions(**vars(args)))
    except (ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
