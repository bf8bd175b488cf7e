"""The ``skinmole`` command: ``skinmole predict PATH... [--json]`` and ``skinmole --version``.

Paths stream through ``iter_predict`` one batch at a time and each batch's lines are flushed as soon
as it is done, so a whole test set in one call keeps memory flat and output flowing. A path that is not
a readable image gets an error line and the rest are still answered; the exit status says whether any
was refused (0: all read, 2: any unreadable or a bad model; an image the quality gate refuses was read).
Only argparse/json at import time: the model and its engine load when a command needs them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__

EXIT_OK = 0
EXIT_REFUSED = 2
NAME_WIDTH_MAX = 48
DISCLAIMER = ("p(malignant) is how much an image resembles the malignant lesions of the training data, "
              "calibrated on validation data. It is not a diagnosis.")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skinmole",
        description="How much does a dermoscopic image of a mole resemble malignant lesions? "
                    "Not a diagnostic device.",
    )
    parser.add_argument("--version", action="store_true", help="print the skinmole version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("predict", help="predict images given as paths",
                       description="Predict each image; one line (or table row) per input, in input order.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files (JPEG, PNG, BMP, TIFF, WebP, GIF)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per input per line: Prediction.to_dict() plus 'input', or {'input', 'error'}")
    p.add_argument("--model", metavar="SOURCE", default=None,
                   help="a model folder, a file inside one, or a Hugging Face repo id ORG/NAME "
                        "(default: the bundled model)")
    p.add_argument("--revision", default=None, help="with a Hub repo id: the branch, tag or commit")
    p.add_argument("--batch-size", type=_positive_int, default=64, metavar="N",
                   help="images per model call (default 64)")
    p.add_argument("--no-quality-check", action="store_true",
                   help="skip the image-quality / out-of-distribution gate")
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, ValueError) else f"{type(exc).__name__}: {text}"


def _load(source, revision):
    """Load the model and build its engine now, so that a bad model is one error line, not a traceback."""
    from .model import resolve_model

    model = resolve_model(source, revision=revision)
    model.engine  # noqa: B018 - build the engine (and read the weights) before any output
    return model


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _fit(text: str, width: int) -> str:
    text = _printable(text)
    return text if len(text) <= width else "..." + text[-(width - 3):]


def _table_row(name: str, result, width: int) -> str:
    from .images import InvalidImageError

    if isinstance(result, InvalidImageError):
        return f"{name:<{width}}  {'error':<9}  {_printable(str(result))}"
    if result.malignant_probability is None:
        issues = "; ".join(str(i) for i in result.quality.get("issues", [])) or "refused by the quality gate"
        return f"{name:<{width}}  {'refused':<9}  {'-':>12}  {result.threshold:>9.3f}  {_printable(issues)}"
    top = ""
    if result.diagnosis:
        dx, p = max(result.diagnosis.items(), key=lambda kv: kv[1])
        top = f"{dx} {p:.2f}"
    return (f"{name:<{width}}  {result.label:<9}  {result.malignant_probability:>12.3f}  "
            f"{result.threshold:>9.3f}  {top}")


def _predict(args, out, err) -> int:
    try:
        model = _load(args.model, args.revision)
    except Exception as exc:  # noqa: BLE001 - any failure to load a model is the user's input, reported in one line
        print(f"skinmole: cannot load model {args.model or '(bundled default)'}: {_one_line(exc)}", file=err)
        return EXIT_REFUSED

    from .images import InvalidImageError
    from .predict import iter_predict

    width = min(NAME_WIDTH_MAX, max(len("input"), *(len(_printable(p)) for p in args.paths)))
    if not args.json:
        out.write(f"{'input':<{width}}  {'label':<9}  {'p(malignant)':>12}  {'threshold':>9}  top diagnosis\n")
        out.flush()
    counts = {"benign": 0, "malignant": 0, "refused": 0, "error": 0}
    results = iter_predict(iter(args.paths), model, check_quality=not args.no_quality_check,
                           batch_size=args.batch_size)
    for n, (path, result) in enumerate(results, start=1):
        if isinstance(result, InvalidImageError):
            counts["error"] += 1
            record = {"input": path, "error": str(result)}
        else:
            counts[result.label or "refused"] += 1
            record = {"input": path, **result.to_dict()}
        if args.json:
            out.write(json.dumps(record) + "\n")
        else:
            out.write(_table_row(_fit(path, width), result, width) + "\n")
        if n % args.batch_size == 0:
            out.flush()
    if not args.json:
        total = sum(counts.values())
        out.write(f"\n{total} input(s): {counts['benign']} benign, {counts['malignant']} malignant, "
                  f"{counts['refused']} refused by the quality gate, {counts['error']} unreadable\n")
        out.write(DISCLAIMER + "\n")
    out.flush()
    return EXIT_REFUSED if counts["error"] else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script passes it to ``sys.exit``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's --help (0) or a usage error (2)
        return int(exc.code or 0)
    if args.version:
        print(f"skinmole {__version__}")
        return EXIT_OK
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_REFUSED
    try:
        return _predict(args, sys.stdout, sys.stderr)
    except BrokenPipeError:
        # e.g. `skinmole predict *.jpg --json | head`: stop quietly, and keep Python's exit-time flush quiet too
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except KeyboardInterrupt:
        print("skinmole: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
