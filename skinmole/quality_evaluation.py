"""Measure the quality gate: how many non-lesion images it turns away, how much real dermoscopy it keeps.

    python scripts/evaluate_quality.py --model models/NAME [--data labels.csv] [--output quality_eval.json]

The non-lesion set (``non_lesion_images``) is built only from what installed packages ship plus
generated images, so anyone can rebuild it: scikit-image ``skimage.data`` photos, scikit-learn's
``load_sample_images``, matplotlib's sample data (photos, rendered maps and an MRI slice, plots),
rendered documents, screenshot-like UI images, noise, flat colours, gradients, checkerboards,
stripes and shapes, plus crops, resizes, rotations and colour shifts of the photos. The real set is
the HAM10000 ``test`` split (never used to fit the gate). The JSON reports the rejection and
acceptance rates, which check caught what, and per-family rates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SKIMAGE_PHOTOS = [
    "astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "microaneurysms", "moon", "page", "retina", "rocket", "stereo_motorcycle", "text", "binary_blobs",
    "shepp_logan_phantom",
]
WORDS = ("the of and to in is was for on that with as by at from patient report date page total "
         "invoice amount results analysis figure table section summary lorem ipsum dolor sit amet "
         "consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna").split()


def _rgb(x) -> np.ndarray:
    """Any array a package ships (bool, float 0..1, gray, RGBA) as RGB uint8."""
    x = np.asarray(x)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8) * 255
    elif np.issubdtype(x.dtype, np.floating):
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
        x = np.uint8(np.clip((x - lo) / max(hi - lo, 1e-9) * 255, 0, 255))
    elif x.dtype != np.uint8:
        lo, hi = float(x.min()), float(x.max())
        x = np.uint8((x.astype(np.float64) - lo) / max(hi - lo, 1e-9) * 255)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    if x.shape[2] == 4:
        bg = Image.new("RGBA", (x.shape[1], x.shape[0]), (255, 255, 255, 255))
        x = np.asarray(Image.alpha_composite(bg, Image.fromarray(x, "RGBA")).convert("RGB"))
    return np.ascontiguousarray(x[..., :3])


def _colormap(z, cmap: str) -> np.ndarray:
    import matplotlib

    z = np.asarray(z, dtype=np.float64)
    z = (z - np.nanmin(z)) / max(np.nanmax(z) - np.nanmin(z), 1e-9)
    return np.uint8(matplotlib.colormaps[cmap](np.nan_to_num(z))[..., :3] * 255)


def package_photos() -> list[tuple[str, np.ndarray]]:
    """Photos and rendered data that scikit-image, scikit-learn and matplotlib ship."""
    out = []
    try:
        import skimage.data as skd

        for name in SKIMAGE_PHOTOS:
            try:
                img = getattr(skd, name)()
            except Exception:  # noqa: BLE001 - some need a download; skip what is not installed
                continue
            if isinstance(img, tuple):
                img = img[0]
            out.append((f"skimage/{name}", _rgb(img)))
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images

        for fname, img in zip(load_sample_images().filenames, load_sample_images().images):
            out.append((f"sklearn/{Path(fname).stem}", _rgb(img)))
    except ImportError:
        pass
    try:
        from matplotlib import cbook

        for fname in ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png"):
            with cbook.get_sample_data(fname) as f:
                out.append((f"matplotlib/{Path(fname).stem}", load_rgb(Image.open(f))))
        topo = cbook.get_sample_data("topobathy.npz")["topo"]
        out.append(("matplotlib/topobathy", _colormap(topo, "gist_earth")))
        dem = cbook.get_sample_data("jacksboro_fault_dem.npz")["elevation"]
        out.append(("matplotlib/dem_terrain", _colormap(dem, "terrain")))
        out.append(("matplotlib/dem_copper", _colormap(dem, "copper")))
        with cbook.get_sample_data("s1045.ima.gz") as f:
            mri = np.frombuffer(f.read(), np.uint16).reshape((256, 256))
        out.append(("matplotlib/mri", _rgb(mri)))
        out.append(("matplotlib/mri_hot", _colormap(mri, "hot")))
    except (ImportError, OSError, KeyError, ValueError):
        pass
    return out


def load_rgb(im: Image.Image) -> np.ndarray:
    from .images import load_image

    return load_image(im)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _text(rng, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, n_words))


def document(rng) -> np.ndarray:
    """A page of text (letter, invoice, report), sometimes tinted, sometimes photographed at an angle."""
    w, h = int(rng.choice([600, 800, 1000])), int(rng.choice([400, 600, 800]))
    paper = tuple(int(v) for v in rng.choice([[255, 255, 255], [250, 246, 235], [235, 235, 240], [255, 250, 220]]))
    im = Image.new("RGB", (w, h), paper)
    d = ImageDraw.Draw(im)
    size = int(rng.integers(12, 28))
    font = _font(size)
    ink = tuple(int(v) for v in rng.choice([[0, 0, 0], [30, 30, 90], [60, 60, 60]]))
    y = int(rng.integers(10, 40))
    d.text((30, y), _text(rng, 4).upper(), fill=ink, font=_font(size + 8))
    y += size + 20
    while y < h - size:
        if rng.random() < 0.1:  # a table row or rule
            d.line([(30, y), (w - 30, y)], fill=ink, width=1)
        d.text((30, y), _text(rng, int(rng.integers(4, 14))), fill=ink, font=font)
        y += int(size * rng.uniform(1.3, 2.0))
    if rng.random() < 0.3:
        im = im.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR, expand=True, fillcolor=(90, 70, 50))
    return np.asarray(im)


def screenshot(rng) -> np.ndarray:
    """A screenshot-like UI: title bar, side panel, buttons, text, a chart or an image area."""
    w, h = int(rng.choice([800, 1024, 1280])), int(rng.choice([600, 768, 720]))
    dark = rng.random() < 0.4
    bg = (30, 32, 36) if dark else (245, 246, 248)
    fg = (220, 220, 220) if dark else (20, 20, 20)
    im = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(im)
    accent = tuple(int(v) for v in rng.integers(0, 255, 3))
    d.rectangle([0, 0, w, 36], fill=accent)
    d.text((12, 8), _text(rng, 3), fill=(255, 255, 255), font=_font(18))
    side = int(rng.integers(150, 260))
    d.rectangle([0, 36, side, h], fill=(45, 48, 54) if dark else (228, 230, 235))
    for i in range(int(rng.integers(5, 14))):
        d.text((14, 50 + 30 * i), _text(rng, 2), fill=fg, font=_font(15))
    y = 60
    while y < h - 60:
        kind = rng.random()
        if kind < 0.45:
            d.text((side + 20, y), _text(rng, int(rng.integers(5, 12))), fill=fg, font=_font(16))
            y += 28
        elif kind < 0.7:
            for k in range(int(rng.integers(1, 4))):
                x0 = side + 20 + 140 * k
                d.rounded_rectangle([x0, y, x0 + 120, y + 32], radius=6, fill=accent)
                d.text((x0 + 12, y + 8), _text(rng, 1), fill=(255, 255, 255), font=_font(14))
            y += 48
        else:
            bh = int(rng.integers(80, 200))
            d.rectangle([side + 20, y, w - 20, y + bh], outline=fg)
            xs = np.linspace(side + 30, w - 30, 30)
            ys = y + bh / 2 + np.cumsum(rng.normal(0, bh / 12, 30)).clip(-bh / 2 + 5, bh / 2 - 5)
            d.line(list(zip(xs.tolist(), ys.tolist())), fill=accent, width=2)
            y += bh + 20
    return np.asarray(im)


def chart(rng) -> np.ndarray:
    """A matplotlib figure (line, bar, scatter or image plot) rendered to pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(float(rng.uniform(4, 8)), float(rng.uniform(3, 6))), dpi=80)
    kind = int(rng.integers(4))
    x = np.linspace(0, 10, 200)
    if kind == 0:
        for _ in range(int(rng.integers(1, 4))):
            ax.plot(x, np.sin(x * rng.uniform(0.5, 3)) + rng.normal(0, 0.1, x.size))
    elif kind == 1:
        ax.bar(range(8), rng.uniform(1, 10, 8), color=rng.uniform(0, 1, 3))
    elif kind == 2:
        ax.scatter(rng.normal(size=300), rng.normal(size=300), s=8, c=rng.uniform(size=300))
    else:
        ax.imshow(rng.normal(size=(30, 30)).cumsum(0), cmap=str(rng.choice(["viridis", "magma", "copper", "pink"])))
    ax.set_title(_text(rng, 3))
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img


def noise(rng) -> np.ndarray:
    h, w = int(rng.integers(150, 600)), int(rng.integers(150, 600))
    kind = int(rng.integers(5))
    if kind == 0:
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == 1:
        g = np.clip(rng.normal(128, 40, (h, w)), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if kind == 2:  # noise around a skin-like colour
        base = np.array([rng.uniform(150, 230), rng.uniform(100, 170), rng.uniform(80, 150)])
        return np.clip(base + rng.normal(0, rng.uniform(5, 40), (h, w, 3)), 0, 255).astype(np.uint8)
    if kind == 3:  # smooth low-frequency noise (clouds)
        small = rng.uniform(0, 255, (int(rng.integers(3, 12)), int(rng.integers(3, 12)), 3)).astype(np.uint8)
        return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))
    sp = np.full((h, w), 128, np.uint8)  # salt and pepper
    r = rng.random((h, w))
    sp[r < 0.1] = 0
    sp[r > 0.9] = 255
    return np.repeat(sp[..., None], 3, axis=2)


def flat(rng) -> np.ndarray:
    h, w = int(rng.integers(100, 800)), int(rng.integers(100, 800))
    if rng.random() < 0.4:  # skin-like
        colour = [rng.uniform(150, 235), rng.uniform(100, 180), rng.uniform(80, 160)]
    else:
        colour = rng.integers(0, 256, 3)
    return np.broadcast_to(np.uint8(colour), (h, w, 3)).copy()


def gradient(rng) -> np.ndarray:
    h, w = int(rng.integers(150, 600)), int(rng.integers(150, 600))
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    if rng.random() < 0.5:
        a = rng.uniform(0, np.pi)
        t = (np.cos(a) * xx / w + np.sin(a) * yy / h)
    else:  # radial: a soft blob, the most lesion-like of the generated images
        if rng.random() < 0.5:
            c0 = np.array([rng.uniform(60, 120), rng.uniform(30, 70), rng.uniform(20, 50)])
            c1 = np.array([rng.uniform(180, 230), rng.uniform(130, 170), rng.uniform(110, 150)])
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        t = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / (0.5 * max(h, w))
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    return np.uint8(c0 + (c1 - c0) * t[..., None])


def pattern(rng) -> np.ndarray:
    """Checkerboards, stripes and random shapes."""
    h, w = int(rng.integers(150, 600)), int(rng.integers(150, 600))
    yy, xx = np.mgrid[0:h, 0:w]
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    kind = int(rng.integers(3))
    if kind == 0:
        s = int(rng.integers(4, 60))
        m = ((yy // s + xx // s) % 2).astype(bool)
    elif kind == 1:
        s = int(rng.integers(3, 40))
        m = ((xx if rng.random() < 0.5 else yy) // s % 2).astype(bool)
    else:
        im = Image.new("RGB", (w, h), tuple(int(v) for v in c0))
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(3, 20))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            box = [x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))]
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=colour)
        return np.asarray(im)
    return np.where(m[..., None], c1, c0).astype(np.uint8)


def variants(name: str, rgb: np.ndarray, rng, n_crops: int = 3) -> list[tuple[str, np.ndarray]]:
    """The photo itself, random crops, a small resize, a rotation and a colour shift."""
    out = [(name, rgb)]
    h, w = rgb.shape[:2]
    for k in range(n_crops):
        s = rng.uniform(0.25, 0.7)
        ch, cw = max(32, int(h * s)), max(32, int(w * s * rng.uniform(0.8, 1.25)))
        ch, cw = min(ch, h), min(cw, w)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out.append((f"{name}/crop{k}", np.ascontiguousarray(rgb[y:y + ch, x:x + cw])))
    side = int(rng.integers(96, 200))
    scale = side / min(h, w)
    small = Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    out.append((f"{name}/resized{side}", np.asarray(small)))
    out.append((f"{name}/rot90", np.ascontiguousarray(np.rot90(rgb))))
    shift = rgb.astype(np.float32) * rng.uniform(0.7, 1.2, 3) + rng.uniform(-20, 20, 3)
    out.append((f"{name}/colour", np.clip(shift, 0, 255).astype(np.uint8)))
    return out


GENERATORS = {"document": (document, 30), "screenshot": (screenshot, 25), "chart": (chart, 16),
              "noise": (noise, 20), "flat": (flat, 20), "gradient": (gradient, 24), "pattern": (pattern, 20)}


def non_lesion_images(seed: int = 0, *, scale: float = 1.0, photo_variants: bool = True) -> list[tuple[str, np.ndarray]]:
    """The varied non-lesion set: ``(family/name, RGB uint8)`` pairs, deterministic for a seed.

    ``scale`` shrinks the generated families (tests use a handful); ``photo_variants`` adds crops,
    resizes, rotations and colour shifts of every package photo.
    """
    rng = np.random.default_rng(seed)
    out: list[tuple[str, np.ndarray]] = []
    for name, rgb in package_photos():
        out += variants(name, rgb, rng) if photo_variants else [(name, rgb)]
    for family, (make, n) in GENERATORS.items():
        for i in range(max(1, round(n * scale))):
            out.append((f"{family}/{i}", np.ascontiguousarray(make(rng))))
    return out


SHIFTS = ("fov_vignette", "cooler_white_balance", "warmer_white_balance", "darker_25pct", "brighter_15pct",
          "zoom_1.5x", "jpeg_q30")


def shifted(rgb: np.ndarray, kind: str) -> np.ndarray:
    """Real dermoscopy made to look like another clinic's camera (to see how much margin is left)."""
    x = rgb.astype(np.float32)
    h, w = rgb.shape[:2]
    if kind == "fov_vignette":  # the black circular field of view of many contact dermatoscopes
        yy, xx = np.mgrid[0:h, 0:w]
        r = np.sqrt(((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2)
        return np.uint8(x * (r < 0.95)[..., None])
    if kind == "cooler_white_balance":
        return np.uint8(np.clip(x * np.array([0.85, 1.0, 1.15]), 0, 255))
    if kind == "warmer_white_balance":
        return np.uint8(np.clip(x * np.array([1.12, 1.0, 0.85]), 0, 255))
    if kind == "darker_25pct":
        return np.uint8(x * 0.75)
    if kind == "brighter_15pct":
        return np.uint8(np.clip(x * 1.15, 0, 255))
    if kind == "zoom_1.5x":
        ch, cw = int(h / 1.5), int(w / 1.5)
        crop = rgb[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
        return np.asarray(Image.fromarray(crop).resize((w * 2, h * 2), Image.BICUBIC))
    if kind == "jpeg_q30":
        import io

        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=30)
        return np.asarray(Image.open(buf).convert("RGB"))
    raise ValueError(kind)


def _family(name: str) -> str:
    return name.split("/")[0] if not name.startswith(("skimage", "sklearn", "matplotlib")) else "photo:" + name.split("/")[0]


def assess_images(model, images: list, batch_size: int = 32) -> list[dict]:
    """The gate's verdict for each image (an array or a path): ``predict``'s own ``quality``."""
    from .predict import predict

    return [p.quality for p in predict(images, model, batch_size=batch_size)]


def _catches(results: list[dict]) -> dict:
    from .quality import CHECK_ORDER

    n = max(1, len(results))
    return {
        "failed_check_counts": {c: sum(c in r["failed_checks"] for r in results) for c in CHECK_ORDER},
        "only_check_counts": {c: sum(r["failed_checks"] == [c] for r in results) for c in CHECK_ORDER},
        "pixel_checks_only_rejected": round(sum(any(c != "not_dermoscopy" for c in r["failed_checks"]) for r in results) / n, 4),
        "ood_only_rejected": round(sum("not_dermoscopy" in r["failed_checks"] for r in results) / n, 4),
    }


def _accepted_by(groups: list[str], results: list[dict]) -> dict:
    """Acceptance rate per group (label or diagnosis): a gate that refuses one class more is a bias."""
    out = {}
    for g in sorted(set(groups)):
        acc = [r["accepted"] for gg, r in zip(groups, results) if gg == g]
        out[g] = {"n": len(acc), "accepted": round(float(np.mean(acc)), 4)}
    return out


def main(argv=None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder with a quality gate (default: the bundled model)")
    p.add_argument("--data", default=None, help="HAM10000 labels.csv (default: skinmole.data.ham10000_root())")
    p.add_argument("--split", default="test", help="split of --data to measure acceptance on (default test)")
    p.add_argument("--other-clinics", default=None,
                   help="labels.csv of dermoscopy from other clinics and cameras, every row measured "
                        "(default: the isic2020-subset beside HAM10000, when present)")
    p.add_argument("--output", default="quality_eval.json", help="JSON report path")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from .data import ham10000_labels, isic2020_subset_labels, load_set
    from .images import load_image
    from .model import load_model

    model = load_model(args.model)
    if model.quality_gate is None:
        print(f"error: {model.folder} has no quality gate (run skinmole fit-quality first)", file=sys.stderr)
        return 2
    data = args.data or ham10000_labels()
    if data is None:
        print("error: HAM10000 not found; pass --data labels.csv", file=sys.stderr)
        return 2
    t0 = time.time()
    corpus = non_lesion_images(args.seed)
    neg = assess_images(model, [rgb for _, rgb in corpus])

    real = load_set(data, split=args.split)
    pos = assess_images(model, list(real.paths))

    other_csv = args.other_clinics or isic2020_subset_labels()
    other = load_set(other_csv) if other_csv else None
    other_res = assess_images(model, list(other.paths)) if other is not None else None

    shift_images = real.paths[::5]  # every 5th test image, each shifted every way
    shifts = {}
    originals = [load_image(pth) for pth in shift_images]
    for kind in SHIFTS:
        res = assess_images(model, [shifted(rgb, kind) for rgb in originals])
        shifts[kind] = {"n": len(res), "accepted": round(float(np.mean([r["accepted"] for r in res])), 4),
                        "failed_check_counts": _catches(res)["failed_check_counts"]}

    rejected = [not r["accepted"] for r in neg]
    families: dict[str, list[bool]] = {}
    for (name, _), rej in zip(corpus, rejected):
        families.setdefault(_family(name), []).append(rej)
    accepted_names = [name for (name, _), rej in zip(corpus, rejected) if not rej]
    real_rejected = [(str(pth.name), r["failed_checks"]) for pth, r in zip(real.paths, pos) if not r["accepted"]]
    report = {
        "model": {"folder": str(model.folder), "name": model.config.get("name"), "version": model.version},
        "gate": {k: v for k, v in model.config["quality"].items() if k not in ("train_stats",)},
        "non_lesion": {
            "n": len(neg),
            "rejected": round(float(np.mean(rejected)), 4),
            "goal": ">= 0.95",
            **_catches(neg),
            "by_family": {f: {"n": len(v), "rejected": round(float(np.mean(v)), 4)} for f, v in sorted(families.items())},
            "accepted_images": accepted_names,
        },
        "real": {
            "data": real.source,
            "n": len(pos),
            "accepted": round(float(np.mean([r["accepted"] for r in pos])), 4),
            "goal": ">= 0.98",
            **_catches(pos),
            "rejected_images": real_rejected,
            "accepted_by_label": _accepted_by(real.labels, pos),
            **({"accepted_by_dx": _accepted_by(real.dx, pos)} if real.dx is not None else {}),
        },
        **({"other_clinics": {
            "data": other.source,
            "n": len(other_res),
            "accepted": round(float(np.mean([r["accepted"] for r in other_res])), 4),
            "goal": ">= 0.97",
            **_catches(other_res),
            "accepted_by_label": _accepted_by(other.labels, other_res),
        }} if other is not None else {}),
        "shifted_real": {
            "note": "every 5th test image, changed to mimic other clinics' cameras (not a substitute for real external data)",
            **shifts,
        },
        "seconds": round(time.time() - t0, 1),
        "script": "scripts/evaluate_quality.py (skinmole.quality_evaluation)",
    }
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"non-lesion images rejected: {report['non_lesion']['rejected']:.1%} of {len(neg)} (goal >= 95%)")
    print(f"{real.source} accepted: {report['real']['accepted']:.1%} of {len(pos)} (goal >= 98%)")
    print("non-lesion caught by:", report["non_lesion"]["failed_check_counts"])
    print("real rejected by:", report["real"]["failed_check_counts"])
    print("real accepted by label:", report["real"]["accepted_by_label"])
    if other is not None:
        print(f"{other.source} (other clinics) accepted: {report['other_clinics']['accepted']:.1%} "
              f"of {len(other_res)} (goal >= 97%); refused by: {report['other_clinics']['failed_check_counts']}")
    print("shifted test images accepted:", {k: v["accepted"] for k, v in shifts.items()})
    print(f"wrote {args.output}")
    return 0

