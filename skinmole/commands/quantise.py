"""``skinmole quantise MODEL_FOLDER``: add ``model-int8.onnx`` (the opt-in int8 engine) to a model folder.

Calibrates on training images (and, with ``--fine-tune-epochs``, fine-tunes the int8 weights on them
towards the float engine's answers), measures the int8 model against the float engine on validation
images (labels flipped at the threshold, |delta P(malignant)|, ROC AUC) and records the file, its
sha256, the recipe and that agreement in the folder's config. By default both image sets come from
HAM10000's ``labels.csv`` (splits ``train`` and ``val``). Exit 0 on success, 1 on any failure.
"""

from __future__ import annotations

import argparse
import sys

from . import positive_int

EXAMPLES = """\
examples:
  skinmole quantise skinmole/weights/default            HAM10000 train to calibrate, val to measure
  skinmole quantise MODEL --calibration train/ --validation val/   class-folder trees or CSV files
  skinmole quantise MODEL --fine-tune-epochs 3      then fine-tune the int8 weights on the training images

Then: skinmole predict --engine onnx-int8 --model MODEL photos/  (opt-in; 'auto' stays the float engine)"""


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Add an int8 copy of model.onnx to a model folder, with its "
                                            "measured agreement with the float engine.")
    p.add_argument("model", metavar="MODEL_FOLDER", help="a model folder with model.onnx")
    p.add_argument("--calibration", metavar="SOURCE", default=None,
                   help="training images for the activation ranges: a CSV (its 'train' split when it has "
                        "a split column) or a class-folder tree (default: HAM10000 train)")
    p.add_argument("--validation", metavar="SOURCE", default=None,
                   help="images to measure the agreement on, never the calibration ones: a CSV (its 'val' "
                        "split when it has a split column) or a class-folder tree (default: HAM10000 val)")
    p.add_argument("--calibration-images", type=positive_int, default=None, metavar="N",
                   help="training images to calibrate on, a seeded random sample (default: the recipe's)")
    p.add_argument("--fine-tune-epochs", type=int, default=None, metavar="N",
                   help="epochs of quantisation-aware fine-tuning of the int8 weights towards the float "
                        "answers, on all the calibration source's images (default: the recipe's; 0: none)")
    p.add_argument("--cache", default=".cache", metavar="DIR", help="pixel cache folder (default .cache)")
    return p


def _images(source, split: str, default_source):
    """A CSV's ``split`` rows (all its rows when it has no split column), or a class-folder tree."""
    from ..data import DatasetError, load_set, read_csv

    if source is None:
        if default_source is None:
            raise ValueError("HAM10000 not found (set SKINMOLE_HAM10000), and no --calibration/--validation given")
        return read_csv(default_source, split=split)
    if str(source).lower().endswith(".csv"):
        try:
            return load_set(source, split=split)
        except DatasetError as exc:
            if "no 'split' column" not in str(exc):
                raise
    return load_set(source)


def _name(source: str) -> str:
    """A data source as recorded in the config: its last two path parts (``ham10000/labels.csv[val]``)."""
    from pathlib import Path

    return "/".join(Path(source).parts[-2:])


def main(argv=None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    from dataclasses import replace

    from ..errors import DatasetError, ModelLoadError
    from ..extras import require

    try:
        require("train", "int8 quantisation")
        from ..data import ham10000_labels, load_pixels
        from ..model_folder import ModelFolder
        from ..quantisation import DEFAULT_RECIPE, calibration_sample, quantise_model_folder

        recipe = DEFAULT_RECIPE
        if args.calibration_images:
            recipe = replace(recipe, calibration_images=args.calibration_images)
        if args.fine_tune_epochs is not None:
            recipe = replace(recipe, fine_tune_epochs=args.fine_tune_epochs)
        size = ModelFolder.open(args.model, verify=False).config.input_size
        default = ham10000_labels() if args.calibration is None or args.validation is None else None
        train = _images(args.calibration, "train", default)
        val = _images(args.validation, "val", default)
        if set(map(str, train.paths)) & set(map(str, val.paths)):
            raise ValueError("the calibration and validation images overlap: the agreement must be measured "
                             "on images the calibration never saw")
        sample = calibration_sample(len(train), recipe.calibration_images)
        fine_tune = load_pixels(train, size, args.cache) if recipe.fine_tune_epochs else None
        calibration = fine_tune[sample] if fine_tune is not None else load_pixels(train.subset(sample), size, args.cache)
        validation = load_pixels(val, size, args.cache)
        config = quantise_model_folder(args.model, calibration, validation, val.y, fine_tune_pixels=fine_tune,
                                       recipe=replace(recipe, calibration_images=len(calibration)),
                                       split=f"{_name(val.source)} ({len(val)} images)",
                                       calibration_source=f"{_name(train.source)}: seeded random sample (seed 0)")
    except (ModelLoadError, DatasetError, ValueError, ImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    a = config.int8
    auc = (f", ROC AUC {a.roc_auc_float:.4f} float / {a.roc_auc_int8:.4f} int8"
           if a.roc_auc_float is not None and a.roc_auc_int8 is not None else "")
    print(f"wrote {ModelFolder.open(args.model, verify=False).path / a.file}: against the float engine on "
          f"{a.n} images, {a.labels_flipped} label(s) flipped at the threshold, |delta P(malignant)| "
          f"p99 {a.p99_abs_dp:.4f}, max {a.max_abs_dp:.4f}{auc}")
    return 0
