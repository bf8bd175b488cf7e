"""`skinmole evaluate` as a script: `python scripts/evaluate.py --help`. The code is skinmole.commands.evaluate."""

import sys

from skinmole.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
