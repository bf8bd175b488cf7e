"""The subcommands of ``skinmole`` besides ``predict`` (which lives in ``skinmole.cli``).

One module per command, each with ``main(argv=None, prog=None) -> int``: parse the arguments, call one
function of the package, turn its typed errors into one line on stderr and an exit status. The same
``main`` serves ``skinmole COMMAND ...`` and the matching ``scripts/COMMAND.py``. A module is imported
only when its command runs, so ``skinmole --help`` and ``skinmole predict`` never load TensorFlow.
"""

import os

# TensorFlow's start-up log lines (CPU features, absl) are noise on a command line; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
