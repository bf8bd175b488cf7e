"""The ``skinmole`` command: ``predict`` here, the other subcommands in ``skinmole.commands``.

``skinmole predict`` streams its inputs (files, folders searched recursively, ``-`` for paths on stdin)
through ``iter_predict`` one batch at a time and writes each batch's lines as soon as they are done,
so a whole data set in one call keeps memory flat and output flowing. An unreadable input gets an
error line and the rest are still answered. The JSON lines are a contract (``PREDICT_EXAMPLES``
says it; ``Prediction.to_dict()`` plus ``input``).

Only argparse/json/signal at import time: the model and its engine load when a command needs them,
and the other subcommands' modules (TensorFlow, Gradio) load only when they are run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import stat
import sys
import time

from . import __version__
from .commands import ENGINE_CHOICES, ENGINE_HELP, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNREADABLE, positive_int

NAME_WIDTH_MAX = 48
PROGRESS_AFTER_S = 2.0   # a run longer than this shows a progress count (stderr on a terminal only)
PROGRESS_EVERY_S = 0.5
DEBUG_ENV = "SKINMOLE_DEBUG"  # set to 1 to see the traceback of an unexpected failure
DISCLAIMER = ("p(malignant) is how much an image resembles the malignant lesions of the training data, "
              "calibrated on validation data. It is not a diagnosis.")

# Subcommands whose code lives in skinmole.commands.<module>; each module has main(argv, prog) -> int
# and is imported only when its command runs.
COMMANDS = {
    "demo": ("demo", "start the web demo (needs the [demo] extra)"),
    "train": ("train", "train a model folder (needs the [train] extra)"),
    "evaluate": ("evaluate", "metrics and plots of a model on a labelled set (needs the [evaluate] extra)"),
    "fit-quality": ("fit_quality", "fit the quality gate of a model folder (needs the [train] extra)"),
    "export-onnx": ("export_onnx", "add model.onnx to a model folder (needs the [train] extra)"),
    "publish": ("publish", "publish a model folder or the demo Space to the Hugging Face Hub"),
    "score": ("score", "score an archive of images into a Parquet file on Ray Data (needs the [scale] extra)"),
    "quantise": ("quantise", "add an int8 copy of model.onnx to a model folder, with its measured agreement"),
}

EXIT_CODES = f"""\
exit status of predict:
  {EXIT_OK}    every input was read (an image the quality gate refuses counts as read)
  {EXIT_UNREADABLE}    any input was unreadable, the model could not be loaded, or bad usage
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
  {EXIT_FAILURE}    any other failure (for example the output could not be written)"""

PREDICT_EXAMPLES = f"""\
examples:
  skinmole predict mole.jpg                      a table on the terminal
  skinmole predict photos/ --json > out.jsonl    every image under photos/, one JSON line each;
                                                 the summary goes to stderr
  ls *.jpg | skinmole predict - --json           paths read from stdin, one per line
  skinmole predict photos/ --output results.txt  the table into a file
  skinmole predict mole.jpg --model ORG/NAME     a model from the Hugging Face Hub

JSON line per input: {{"input", "malignant_probability", "label", "threshold", "diagnosis",
"quality", "model"}}, or {{"input", "error"}} for an input that is not a readable image.
malignant_probability and label are null when the quality gate refused the image.

{EXIT_CODES}"""


class OutputError(Exception):
    """The results could not be written (a closed pipe, a full disk): reported in one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skinmole",
        description="How much does a dermoscopic image of a mole resemble malignant lesions? "
                    "Not a diagnostic device.",
        epilog="Run 'skinmole COMMAND --help' for a command's options.\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the skinmole version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("predict", help="predict image files, folders, or paths read from stdin",
                       description="Predict each image; one JSON line (or table row) per input, in input order.",
                       epilog=PREDICT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="an image file, a folder (searched recursively for "
                        f"{', '.join(sorted(_image_suffixes()))} files, in sorted order), "
                        "or - to read paths from stdin, one per line")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per input per line (Prediction.to_dict() plus 'input', or "
                        "{'input', 'error'}); the summary goes to stderr")
    p.add_argument("--output", "-o", metavar="FILE", default=None,
                   help="write the JSON lines or the table to FILE instead of stdout")
    p.add_argument("--model", metavar="SOURCE", default=None,
                   help="a model folder, a file inside one, or a Hugging Face repo id ORG/NAME "
                        "(default: the bundled model)")
    p.add_argument("--revision", default=None, help="with a Hub repo id: the branch, tag or commit")
    p.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                   help="images per model call (default 64)")
    p.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                   help=ENGINE_HELP)
    p.add_argument("--no-quality-check", action="store_true",
                   help="skip the image-quality / out-of-distribution gate")
    for name, (_, text) in COMMANDS.items():  # listed in --help; parsed by their own modules
        sub.add_parser(name, help=text, add_help=False)
    return parser


def _image_suffixes() -> set[str]:
    from .data import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, ValueError) else f"{type(exc).__name__}: {text}"


def _load(source, revision, engine="auto"):
    """Load the model and build its engine now, so that a bad model is one error line, not a traceback."""
    from . import load_model

    model = load_model(source, revision=revision, engine=engine)
    model.engine  # noqa: B018 - build the engine (and read the weights) before any output
    return model


# --- inputs ------------------------------------------------------------------------------------------

class Inputs:
    """The paths to predict, in order: each PATH as given, a folder's image files (recursive, sorted,
    hidden names skipped), ``-``: the lines of stdin. Folders that cannot be listed are remembered
    in ``unlisted`` (each one makes the run exit 2)."""

    def __init__(self, args: list[str], stdin):
        self.args = args
        self.stdin = stdin
        self.unlisted: list[str] = []

    def __iter__(self):
        for arg in self.args:
            if arg == "-":
                for path in self._stdin_lines():
                    yield from self._expand(path)
            else:
                yield from self._expand(arg)

    def _stdin_lines(self):
        """Each line as a path; read as bytes when possible, so that any file name survives."""
        raw = getattr(self.stdin, "buffer", None)
        for line in raw if raw is not None else self.stdin:
            path = os.fsdecode(line.rstrip(b"\r\n")) if isinstance(line, bytes) else line.rstrip("\r\n")
            if path:
                yield path

    def _expand(self, path: str):
        if not os.path.isdir(path):
            yield path  # a file, or something predict reports as unreadable
            return
        suffixes = _image_suffixes()

        def unlisted(exc: OSError):
            self.unlisted.append(f"{exc.filename or path}: {exc.strerror or exc}")

        found = 0
        for folder, dirs, files in os.walk(path, onerror=unlisted):  # symlinked folders are not followed
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in suffixes:
                    found += 1
                    yield os.path.join(folder, name)
        if not found:
            self.unlisted.append(f"{path}: no image files ({', '.join(sorted(suffixes))}) in it")


# --- output ------------------------------------------------------------------------------------------

class Output:
    """A text stream whose write failures (closed pipe, full disk) become ``OutputError``."""

    def __init__(self, stream, name: str):
        self.stream = stream
        self.name = name
        self.encoding = getattr(stream, "encoding", None) or "utf-8"

    def write(self, text: str) -> None:
        self._do("write", text)

    def flush(self) -> None:
        self._do("flush")

    def _do(self, method: str, *args) -> None:
        if self.stream is None:  # started with the stream closed (`>&-`)
            raise OutputError(f"cannot write to {self.name}: it is closed")
        try:
            getattr(self.stream, method)(*args)
        except (OSError, ValueError) as exc:  # ValueError: a closed file
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(exc)
            raise OutputError(f"cannot write to {self.name}: {reason}") from None

    def isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (OSError, ValueError, AttributeError):
            return False


def printable(text: str, encoding: str = "utf-8") -> str:
    """``text`` with every character that could move the cursor, start a new row or drive the
    terminal (newlines, escape codes, undecodable bytes) written as a backslash escape."""
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return out.encode(encoding, "backslashreplace").decode(encoding)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def _table_header(width: int) -> str:
    from .predict import SUMMARY_HEADER

    return f"{'input':<{width}}  {SUMMARY_HEADER}\n"


def _table_row(path: str, result, width: int, encoding: str) -> str:
    """The input's name, then the prediction's ``summary()`` or the error in the label column."""
    name = _fit(printable(path, encoding), width)
    text = f"{'error':<9}  {result}" if isinstance(result, Exception) else result.summary()
    return f"{name:<{width}}  {printable(text, encoding)}\n"


class Progress:
    """``N images`` on stderr, rewritten in place, once a run has taken a while; only on a terminal
    and only when the results themselves do not go to that terminal."""

    def __init__(self, err: Output, enabled: bool):
        self.err = err
        self.enabled = enabled
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def update(self, n: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.start >= PROGRESS_AFTER_S and now - self.last >= PROGRESS_EVERY_S:
            self.err.write(f"\rskinmole: {n:,} images ...")
            self.err.flush()
            self.last, self.shown = now, True

    def clear(self) -> None:
        if self.shown:
            self.err.write("\r\033[K")
            self.shown = False


def _summary(counts: dict) -> str:
    total = sum(counts.values())
    return (f"{total} input(s): {counts['benign']} benign, {counts['malignant']} malignant, "
            f"{counts['refused']} refused by the quality gate, {counts['error']} unreadable\n")


def _predict(args, model, out: Output, err: Output, stdin) -> int:
    from . import InvalidImageError, iter_predict

    inputs = Inputs(args.paths, stdin)
    paths = iter(inputs)
    if not args.json:  # a table needs its column width before the first row: list the inputs first
        paths = list(paths)
        width = min(NAME_WIDTH_MAX, max([len("input")] + [len(printable(p, out.encoding)) for p in paths]))
        out.write(_table_header(width))
        out.flush()
    progress = Progress(err, enabled=err.isatty() and not out.isatty())
    counts = {"benign": 0, "malignant": 0, "refused": 0, "error": 0}
    results = iter_predict(paths, model, check_quality=not args.no_quality_check, batch_size=args.batch_size)
    for n, (path, result) in enumerate(results, start=1):
        if isinstance(result, InvalidImageError):
            counts["error"] += 1
            record = {"input": path, "error": str(result)}
        else:
            counts[result.label or "refused"] += 1
            record = {"input": path, **result.to_dict()}
        out.write(json.dumps(record) + "\n" if args.json else _table_row(path, result, width, out.encoding))
        if n % args.batch_size == 0:
            out.flush()
            progress.update(n)
    progress.clear()
    for message in inputs.unlisted:
        counts["error"] += 1
        err.write(f"skinmole: folder {printable(message, err.encoding)}\n")
    summary = _summary(counts) + DISCLAIMER + "\n"
    if args.json or args.output:
        err.write(summary)
    if not args.json:
        out.write("\n" + summary)
    out.flush()
    return EXIT_UNREADABLE if counts["error"] else EXIT_OK


def _run_predict(args) -> int:
    err = Output(sys.stderr, "stderr")
    try:  # before --output is opened: a model that cannot load leaves an existing file as it was
        model = _load(args.model, args.revision, args.engine)
    except Exception as exc:  # noqa: BLE001 - any failure to load a model is the user's input, reported in one line
        err.write(f"skinmole: cannot load model {args.model or '(bundled default)'}: {_one_line(exc)}\n")
        return EXIT_UNREADABLE
    if args.output is None:
        return _predict(args, model, Output(sys.stdout, "stdout"), err, sys.stdin)
    try:
        stream = open(args.output, "w", encoding="utf-8", newline="\n")
    except OSError as exc:
        err.write(f"skinmole: cannot write {printable(args.output)}: {exc.strerror or exc}\n")
        return EXIT_FAILURE
    with stream:
        return _predict(args, model, Output(stream, printable(args.output)), err, sys.stdin)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's exit-time flush of what is still buffered for a
    closed pipe or a full disk does not print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _interrupted(signum=None, frame=None):
    """SIGINT handler for predict: one line and exit 130 at once, wherever the interrupt lands (an
    import, a decode thread's wait, a library that would swallow a KeyboardInterrupt)."""
    try:  # the answers already computed, unless that would wait for a reader of a full pipe
        if stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode):
            os.set_blocking(sys.stdout.fileno(), False)
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - exiting anyway
        pass
    try:
        os.write(2, b"skinmole: interrupted\n")
    finally:
        os._exit(EXIT_INTERRUPTED)


def _delegate(command: str, argv: list[str]) -> int:
    module = importlib.import_module(f".commands.{COMMANDS[command][0]}", __package__)
    try:
        return module.main(argv, prog=f"skinmole {command}")
    except SystemExit as exc:  # argparse's --help (0) or a usage error (2)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return EXIT_FAILURE
        return int(exc.code or 0)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script passes it to ``sys.exit``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in COMMANDS:
            return _delegate(argv[0], argv[1:])
        if not _is_main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            return _parse_and_predict(argv)  # handlers are for the main thread; an ignored SIGINT stays ignored
        previous = signal.signal(signal.SIGINT, _interrupted)
        try:
            return _parse_and_predict(argv)
        finally:
            signal.signal(signal.SIGINT, previous)
    except OutputError as exc:
        _silence_stdout()
        print(f"skinmole: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("skinmole: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback (SKINMOLE_DEBUG=1 shows it)
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"skinmole: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE


def _parse_and_predict(argv: list[str]) -> int:
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
        return EXIT_UNREADABLE
    return _run_predict(args)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
