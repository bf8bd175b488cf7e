"""`skinmole train` as a script: `python scripts/train.py --help`. The code is skinmole.commands.train."""

import sys

from skinmole.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
