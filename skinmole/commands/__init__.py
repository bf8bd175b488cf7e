"""The subcommands of ``skinmole`` besides ``predict`` (which lives in ``skinmole.cli``).

One module per command, each with ``main(argv=None, prog=None) -> int``: parse the arguments, call one
function of the package, turn its typed errors into one line on stderr and an exit status. The same
``main`` serves ``skinmole COMMAND ...`` and the matching ``scripts/COMMAND.py``. A module is imported
only when its command runs, so ``skinmole --help`` and ``skinmole predict`` never load TensorFlow.
"""

import argparse
import os

# TensorFlow's start-up log lines (CPU features, absl) are noise on a command line; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The exit status of the commands that read inputs (predict, score).
EXIT_OK, EXIT_FAILURE, EXIT_UNREADABLE, EXIT_INTERRUPTED = 0, 1, 2, 130
# --engine of predict and score: skinmole.engines.ENGINES, written out so the CLI imports no numpy to parse.
ENGINE_CHOICES = ("auto", "onnx", "onnx-int8", "keras")
ENGINE_HELP = ("auto (default: the float ONNX engine), onnx, keras, or onnx-int8 (the folder's int8 model from "
               "'skinmole quantise': faster, answers within the agreement its config records)")


def positive_int(text: str) -> int:
    """argparse type for counts such as --batch-size."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
