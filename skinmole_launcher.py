"""The ``skinmole`` console script: Ctrl-C is one line and exit 130 from the first instant.

Why a module outside the package: Python imports ``skinmole/__init__.py`` (numpy, Pillow, the
engine) before any function of the package can run, so an interrupt during those imports would
print a traceback. This launcher installs the handler first, then hands over to ``skinmole.cli``,
which installs its own for the run.
"""

import os
import signal
import sys


def _interrupted_while_starting(signum, frame):
    os.write(2, b"skinmole: interrupted\n")
    os._exit(130)


def main() -> int:
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.SIG_IGN:  # an ignored SIGINT stays ignored
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    from skinmole.cli import main as cli_main

    signal.signal(signal.SIGINT, previous)
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
