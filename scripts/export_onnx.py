"""Add ``model.onnx`` (the fast, TensorFlow-free serving engine) to an existing model folder.

    python scripts/export_onnx.py --model skinmole/weights/default

Writes the file beside ``model.keras``, checks that ONNX Runtime and Keras give the same logits and
features (within 1e-4) and records ``onnx_file`` / ``onnx_sha256`` in config.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (holds config.json and model.keras)")
    parser.add_argument("--no-check", action="store_true", help="skip the Keras-vs-ONNX output comparison")
    args = parser.parse_args(argv)
    from skinmole.model import ModelLoadError
    from skinmole.onnx_export import OnnxExportError, export_model_folder

    try:
        path = export_model_folder(args.model, check=not args.no_check)
    except (ModelLoadError, OnnxExportError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
