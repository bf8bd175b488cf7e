"""`skinmole fit-quality` as a script: `python scripts/fit_quality.py --help`. The code is skinmole.commands.fit_quality."""

import sys

from skinmole.commands.fit_quality import main

if __name__ == "__main__":
    sys.exit(main())
