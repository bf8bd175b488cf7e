"""`skinmole export-onnx` as a script: `python scripts/export_onnx.py --help`. The code is skinmole.commands.export_onnx."""

import sys

from skinmole.commands.export_onnx import main

if __name__ == "__main__":
    sys.exit(main())
