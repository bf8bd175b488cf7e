"""``python -m skinmole ...``: the same as the ``skinmole`` command."""

import sys

from .cli import main

sys.exit(main())
