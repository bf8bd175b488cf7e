"""``skinmole export-onnx --model FOLDER``: add ``model.onnx`` (the TensorFlow-free serving engine)
to a model folder.

Writes the file beside the Keras weights, checks that ONNX Runtime and Keras give the same logits and
features (within 1e-4) and records it in the folder's config. Exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import sys


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Add model.onnx (the TensorFlow-free serving engine) to a model folder.")
    p.add_argument("--model", required=True, help="model folder (holds the config and the Keras weights)")
    p.add_argument("--no-check", action="store_true", help="skip the Keras-vs-ONNX output comparison")
    return p


def main(argv=None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    from ..errors import ModelLoadError, OnnxExportError
    from ..extras import require

    try:
        require("train", "ONNX export")
        from ..onnx_export import export_model_folder

        path = export_model_folder(args.model, check=not args.no_check)
    except (ModelLoadError, OnnxExportError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
