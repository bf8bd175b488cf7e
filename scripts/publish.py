"""`skinmole publish` as a script: `python scripts/publish.py --help`. The code is skinmole.commands.publish."""

import sys

from skinmole.commands.publish import main

if __name__ == "__main__":
    sys.exit(main())
