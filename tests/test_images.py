"""Decoding: every kind of bad input is a typed error naming the input; every valid encoding is read right.

Lossless copies of one image must decode to the very same pixels and so get the same probability;
EXIF orientation is checked against the EXIF specification's own definition of each tag value.
Predictions here run with the quality gate off: these tests are about decoding, and a synthetic image
(grayscale, flat frames) may rightly be refused by the gate.
"""

from __future__ import annotations

import io
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

import skinmole
import skinmole.images as images
from skinmole import InvalidImageError, load_image
from skinmole.sample_images import sample_path

PROB_TOL = 1e-5


# ---------------------------------------------------------------- helpers and shared fixtures

def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_bytes(width: int, height: int, raw_rows: bytes, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG written by hand: lets a test declare any size (bombs) or any bit depth (16-bit RGB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw_rows))
            + chunk(b"IEND", b""))


def png16_rgb(arr16: np.ndarray) -> bytes:
    h, w, _ = arr16.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in arr16)
    return png_bytes(w, h, rows, bit_depth=16, colour_type=2)


@pytest.fixture(scope="module")
def model():
    return skinmole.load_model()


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """A real sample's decoded pixels: the reference every lossless copy must reproduce."""
    return load_image(sample_path("nv"))


@pytest.fixture(scope="module")
def prob(model):
    cache: dict = {}

    def p(source) -> float:
        key = id(source)
        if key not in cache:
            cache[key] = (source, skinmole.predict(source, model, check_quality=False).malignant_probability)
        return cache[key][1]

    return p


# ---------------------------------------------------------------- the corpus of bad inputs

def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _sample_bytes(dx="nv") -> bytes:
    return sample_path(dx).read_bytes()


def _sample_png() -> bytes:
    return encode(Image.open(sample_path("nv")), "PNG")


def _bad_crc_png() -> bytes:
    data = bytearray(_sample_png())
    data[40] ^= 0xFF  # inside the first IDAT chunk: its CRC no longer matches
    return bytes(data)


def _bomb(width, height) -> bytes:
    return png_bytes(width, height, b"\x00" + b"\x00" * 3 * 16)  # one short row of data, huge declared size


# each case: tmp_path, monkeypatch -> (source, the text naming the input, a word of the reason)
BAD_INPUTS = {
    "empty file": lambda t, m: (_write(t, "empty.jpg", b""), None, "empty"),
    "truncated JPEG": lambda t, m: (_write(t, "half.jpg", _sample_bytes()[:2000]), None, "truncated"),
    "JPEG without its end marker": lambda t, m: (_write(t, "noeoi.jpg", _sample_bytes()[:-2]), None, "truncated"),
    "truncated PNG": lambda t, m: (_write(t, "half.png", _sample_png()[:15000]), None, "truncated"),
    "PNG with a broken CRC": lambda t, m: (_write(t, "crc.png", _bad_crc_png()), None, "corrupt"),
    "JPEG marker only": lambda t, m: (_write(t, "soi.jpg", b"\xff\xd8\xff"), None, "not a recognised image"),
    "random bytes": lambda t, m: (
        _write(t, "noise.jpg", np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        None, "not a recognised image"),
    "text named .jpg": lambda t, m: (_write(t, "notes.jpg", b"just some notes\n" * 20), None, "not a recognised"),
    "HTML": lambda t, m: (_write(t, "page.png", b"<!doctype html><html><body><img src=x.jpg></body></html>"),
                          None, "not a recognised"),
    "PDF": lambda t, m: (_write(t, "scan.jpg", encode(Image.open(sample_path("nv")), "PDF")), None, "not a recognised"),
    "SVG": lambda t, m: (_write(t, "mole.svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" '
                                             b'width="10" height="10"><circle r="4" cx="5" cy="5"/></svg>'),
                         None, "not a recognised"),
    "zip holding a JPEG": lambda t, m: (_zip(t), None, "not a recognised"),
    "ICO (a format PIL reads but skinmole does not accept)": lambda t, m: (
        _write(t, "favicon.jpg", encode(Image.open(sample_path("nv")), "ICO")), None, "not a supported"),
    "EPS (would run Ghostscript)": lambda t, m: (
        _write(t, "figure.jpg", encode(Image.open(sample_path("nv")), "EPS")), None, "not a supported"),
    "directory": lambda t, m: (t, None, "directory"),
    "symlink loop": lambda t, m: (_symlink_loop(t), None, "symlink loop"),
    "broken symlink": lambda t, m: (_symlink(t, t / "gone.jpg"), None, "broken symlink"),
    "symlink to a directory": lambda t, m: (_symlink(t, t), None, "directory"),
    "missing path": lambda t, m: (t / "nowhere" / "mole.jpg", None, "no such file"),
    "missing path as str": lambda t, m: (str(t / "gone.jpg"), None, "no such file"),
    "name too long": lambda t, m: (str(t / ("a" * 300 + ".jpg")), None, "cannot be read"),
    "bomb 20000x20000 (past PIL's own limit)": lambda t, m: (_write(t, "bomb.png", _bomb(20000, 20000)), None, "bomb"),
    "bomb 10000x10000 (PIL warns)": lambda t, m: (_write(t, "bomb2.png", _bomb(10000, 10000)), None, "bomb"),
    "bomb 9000x8000 (skinmole's limit)": lambda t, m: (_write(t, "bomb3.png", _bomb(9000, 8000)), None, "bomb"),
    "bomb as bytes": lambda t, m: (_bomb(20000, 20000), "bytes>", "bomb"),
    "TIFF whose tags all point at one large region": lambda t, m: (
        _write(t, "tags.tif", _tiff_with_tags(60, 100_000)), None, "more data than the file holds"),
    "zero-height PNG": lambda t, m: (_write(t, "flat.png", png_bytes(10, 0, b"")), None, "corrupt"),
    "file over the size limit": lambda t, m: (
        m.setattr(images, "MAX_FILE_BYTES", 1000) or _write(t, "big.jpg", _sample_bytes()), None, "limit"),
    "bytes over the size limit": lambda t, m: (
        m.setattr(images, "MAX_FILE_BYTES", 1000) or _sample_bytes(), "bytes>", "limit"),
    "file object over the size limit": lambda t, m: (
        m.setattr(images, "MAX_FILE_BYTES", 1000) or io.BytesIO(_sample_bytes()), "<BytesIO>", "limit"),
    "empty bytes": lambda t, m: (b"", "<0 bytes>", "empty"),
    "HTML as a file object": lambda t, m: (io.BytesIO(b"<html></html>"), "<BytesIO>", "not a recognised"),
    "int": lambda t, m: (42, "<int>", "unsupported input type"),
    "None": lambda t, m: (None, "<NoneType>", "unsupported input type"),
    "list inside a list": lambda t, m: ([[1, 2, 3]], "<list>", "unsupported input type"),
    "text-mode file object": lambda t, m: _text_file(),
    "closed file object": lambda t, m: _closed_file(),
    "array of shape HxWx5": lambda t, m: (np.zeros((10, 10, 5), np.uint8), "(10, 10, 5)", "shape"),
    "1-D array": lambda t, m: (np.zeros(300, np.uint8), "(300,)", "shape"),
    "empty array": lambda t, m: (np.zeros((0, 0, 3), np.uint8), "(0, 0, 3)", "no pixels"),
    "float array with NaN": lambda t, m: (_nan_array(), "float32", "NaN"),
    "float array with inf": lambda t, m: (np.full((8, 8), np.inf), "float64", "infinite"),
    "np.matrix of floats in 0..255": lambda t, m: (_matrix(np.full((8, 8), 200.0)), "float64", "0..1"),
    "PIL float image with a NaN pixel": lambda t, m: (_float_image(np.nan), "<PIL image F", "NaN"),
    "PIL float image with an infinite pixel": lambda t, m: (_float_image(np.inf), "<PIL image F", "infinite"),
    "RGBA PNG over the decoded-bytes limit": lambda t, m: (
        _write(t, "rgba.png", png_bytes(8000, 7000, b"\x00" * 5, colour_type=6)), None, "byte limit"),
    "float array in 0..255": lambda t, m: (np.full((8, 8, 3), 200.0), "float64", "0..1"),
    "negative int array": lambda t, m: (np.full((8, 8), -3, np.int16), "int16", "0..255"),
    "int array over 255": lambda t, m: (np.full((8, 8, 3), 300, np.int32), "int32", "0..255"),
    "complex array": lambda t, m: (np.zeros((8, 8, 3), np.complex64), "complex64", "dtype"),
    "truncated PIL image": lambda t, m: (Image.open(io.BytesIO(_sample_bytes()[:2000])), "<PIL image", "truncated"),
    "PIL image in an unconvertible mode": lambda t, m: (Image.new("La", (8, 8)), "<PIL image La", "mode"),
}


def _zip(tmp: Path) -> Path:
    path = tmp / "moles.jpg"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mole.jpg", _sample_bytes())
    return path


def _text_file():
    f = open(sample_path("nv"), "r")  # noqa: SIM115 - closed by the _cleanup fixture
    _OPEN.append(f)
    return f, str(sample_path("nv")), "binary mode"


def _closed_file():
    f = open(sample_path("nv"), "rb")
    f.close()
    return f, str(sample_path("nv")), "cannot be read"


def _tiff_with_tags(tags: int, region: int) -> bytes:
    """A valid 8x8 TIFF plus ``tags`` private tags that all point at one ``region``-byte blob: Pillow
    would keep a copy per tag (60 x 10 MB took 1.2 GB)."""
    base = encode(Image.new("L", (8, 8), 100), "TIFF")
    ifd = struct.unpack_from("<I", base, 4)[0]
    count = struct.unpack_from("<H", base, ifd)[0]
    entries = [base[ifd + 2 + 12 * i: ifd + 14 + 12 * i] for i in range(count)]
    entries += [struct.pack("<HHII", 40000 + i, 7, region, len(base)) for i in range(tags)]
    entries.sort(key=lambda e: e[:2][::-1])
    new_ifd = len(base) + region
    return (base[:4] + struct.pack("<I", new_ifd) + base[8:] + b"\x00" * region
            + struct.pack("<H", len(entries)) + b"".join(entries) + b"\x00" * 4)


def _symlink(tmp: Path, target: Path) -> Path:
    link = tmp / "link.jpg"
    link.symlink_to(target)
    return link


def _symlink_loop(tmp: Path) -> Path:
    (tmp / "a.jpg").symlink_to(tmp / "b.jpg")
    (tmp / "b.jpg").symlink_to(tmp / "a.jpg")
    return tmp / "a.jpg"


def _float_image(bad: float) -> Image.Image:
    """Mode F, otherwise a plain 0..1 gray image: the bad pixel must not be scaled like the others."""
    a = np.full((16, 16), 0.5, np.float32)
    a[5, 7] = bad
    return Image.fromarray(a, "F")


def _matrix(a: np.ndarray) -> np.matrix:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # numpy discourages np.matrix; users still pass one
        return np.matrix(a)


def _nan_array():
    a = np.full((8, 8, 3), 0.5, np.float32)
    a[3, 3, 1] = np.nan
    return a


_OPEN: list = []


@pytest.fixture(autouse=True)
def _cleanup():
    yield
    while _OPEN:
        _OPEN.pop().close()


def test_the_corpus_is_big_enough():
    assert len(BAD_INPUTS) >= 15


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_typed_error_naming_the_input(case, tmp_path, monkeypatch):
    source, name, reason = BAD_INPUTS[case](tmp_path, monkeypatch)
    name = name if name is not None else str(source)
    with pytest.raises(InvalidImageError) as info:
        load_image(source)
    message = str(info.value)
    assert name in message, f"{case}: the message {message!r} does not name the input {name!r}"
    assert reason.lower() in message.lower(), f"{case}: the message {message!r} does not say {reason!r}"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("case", ["truncated JPEG", "text named .jpg", "bomb 20000x20000 (past PIL's own limit)",
                                  "int", "float array with NaN", "directory"])
def test_predict_raises_the_same_typed_error(case, tmp_path, monkeypatch, model):
    source, name, _ = BAD_INPUTS[case](tmp_path, monkeypatch)
    with pytest.raises(skinmole.InvalidImageError, match="."):
        skinmole.predict(source, model)
    with pytest.raises(skinmole.InvalidImageError):  # inside a list: no partial answer either
        skinmole.predict([sample_path("nv"), source], model)


def test_a_name_given_by_the_caller_is_used(tmp_path):
    with pytest.raises(InvalidImageError, match="upload #3"):
        load_image(b"not an image", name="upload #3")


# ---------------------------------------------------------------- valid unusual encodings

def _rgb_copies(rgb: np.ndarray) -> dict:
    """Lossless encodings of ``rgb``: each must decode to exactly ``rgb``."""
    im = Image.fromarray(rgb)
    copies = {
        "PNG": encode(im, "PNG"),
        "BMP": encode(im, "BMP"),
        "TIFF": encode(im, "TIFF"),
        "TIFF LZW": encode(im, "TIFF", compression="tiff_lzw"),
        "PPM": encode(im, "PPM"),
        "RGBA PNG, opaque": encode(im.convert("RGBA"), "PNG"),
        "RGB 16-bit PNG": png16_rgb(rgb.astype(np.uint16) * 257),
        "CMYK TIFF": encode(im.convert("CMYK"), "TIFF"),
    }
    if features.check("webp"):
        copies["WebP lossless"] = encode(im, "WEBP", lossless=True, quality=100)
    return copies


def test_rgb_16bit_png_is_really_16_bit(rgb):
    data = png16_rgb(rgb.astype(np.uint16) * 257)
    assert data[24] == 16 and data[25] == 2  # IHDR bit depth 16, colour type RGB


@pytest.mark.parametrize("kind", ["PNG", "BMP", "TIFF", "TIFF LZW", "PPM", "RGBA PNG, opaque", "RGB 16-bit PNG",
                                  "CMYK TIFF", "WebP lossless"])
def test_lossless_copy_decodes_to_the_same_pixels_and_probability(kind, rgb, prob, tmp_path):
    copies = _rgb_copies(rgb)
    if kind not in copies:
        pytest.skip(f"this Pillow cannot write {kind}")
    path = _write(tmp_path, f"copy.{kind.split()[0].lower()}", copies[kind])
    decoded = load_image(path)
    np.testing.assert_array_equal(decoded, rgb, err_msg=kind)
    assert prob(str(path)) == pytest.approx(prob(rgb), abs=PROB_TOL)


def test_every_input_kind_of_one_png_gives_the_same_pixels(rgb, tmp_path):
    data = _rgb_copies(rgb)["PNG"]
    path = _write(tmp_path, "a.png", data)
    f = open(path, "rb")
    _OPEN.append(f)
    for source in (path, str(path), data, bytearray(data), memoryview(data), io.BytesIO(data),
                   f, Image.open(io.BytesIO(data)), rgb, rgb.astype(np.float64) / 255.0,
                   np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])):
        np.testing.assert_array_equal(load_image(source), rgb, err_msg=skinmole.images.describe(source))


def test_png_named_jpg_is_read_by_its_content(rgb, prob, tmp_path):
    path = _write(tmp_path, "actually_a_png.jpg", _rgb_copies(rgb)["PNG"])
    np.testing.assert_array_equal(load_image(path), rgb)
    assert prob(str(path)) == pytest.approx(prob(rgb), abs=PROB_TOL)


@pytest.fixture(scope="module")
def gray(rgb) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


@pytest.mark.parametrize("kind", ["L PNG", "I;16 PNG", "I;16 TIFF", "LA PNG, opaque", "dark I;16 PNG"])
def test_grayscale_encodings(kind, gray, prob, tmp_path):
    g16 = gray.astype(np.uint16) * 257
    expected = gray
    if kind == "L PNG":
        data = encode(Image.fromarray(gray), "PNG")
    elif kind == "I;16 PNG":
        data = encode(Image.fromarray(g16), "PNG")
        assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    elif kind == "I;16 TIFF":
        data = encode(Image.fromarray(g16), "TIFF")
    elif kind == "LA PNG, opaque":
        data = encode(Image.merge("LA", [Image.fromarray(gray), Image.new("L", (gray.shape[1], gray.shape[0]), 255)]),
                      "PNG")
    else:  # a 16-bit image that only uses the bottom of its range must stay dark, not be read as 8-bit
        data = encode(Image.fromarray((gray // 4).astype(np.uint16)), "PNG")
        expected = np.rint(gray // 4 * 255.0 / 65535).astype(np.uint8)
        assert expected.max() <= 1
    decoded = load_image(_write(tmp_path, "g.png", data))
    np.testing.assert_array_equal(decoded, np.dstack([expected] * 3), err_msg=kind)
    if kind != "dark I;16 PNG":
        assert prob(data) == pytest.approx(prob(gray), abs=PROB_TOL)


def test_big_endian_uint16_and_np_matrix_are_read_like_native_arrays(rgb, gray):
    native = rgb.astype(np.uint16) * 250 + 7  # high and low bytes differ: a byte-order mix-up shows
    swapped = native.astype(">u2")
    assert swapped.dtype.byteorder == ">" and not np.array_equal(swapped.view(np.uint16), native)
    np.testing.assert_array_equal(load_image(swapped), load_image(native))
    np.testing.assert_array_equal(load_image(native), np.rint(native / 257.0).astype(np.uint8))
    np.testing.assert_array_equal(load_image(_matrix(gray)), load_image(gray))


STRIP_CASES = {
    "RGB": lambda rgb: Image.fromarray(rgb),
    "RGBA, partly transparent": lambda rgb: Image.fromarray(np.dstack([rgb, (np.arange(rgb.shape[1]) % 256).astype(
        np.uint8)[None, :].repeat(rgb.shape[0], 0)]), "RGBA"),
    "LA": lambda rgb: Image.fromarray(rgb).convert("LA"),
    "P with transparency": lambda rgb: _transparent_palette(rgb),
    "CMYK": lambda rgb: Image.fromarray(rgb).convert("CMYK"),
    "I;16": lambda rgb: Image.fromarray(rgb[..., 0].astype(np.uint16) * 201),
    "I (values past 255)": lambda rgb: Image.fromarray(rgb[..., 1].astype(np.int32) * 3),
    "F (0..1)": lambda rgb: Image.fromarray(rgb[..., 2].astype(np.float32) / 255),
    "float array": lambda rgb: rgb.astype(np.float64) / 255,
    "uint16 array": lambda rgb: rgb.astype(np.uint16) * 257,
    "bool array": lambda rgb: rgb[..., 0] > 128,
}


def _transparent_palette(rgb: np.ndarray) -> Image.Image:
    pal = Image.fromarray(rgb).quantize(colors=64, dither=Image.Dither.NONE)
    pal.info["transparency"] = 3
    return pal


@pytest.mark.parametrize("case", sorted(STRIP_CASES))
def test_conversion_in_row_strips_gives_the_pixels_of_one_whole_conversion(case, rgb, monkeypatch):
    source = STRIP_CASES[case](rgb)
    whole = load_image(source)  # the sample is under STRIP_PIXELS: one piece
    assert rgb.shape[0] * rgb.shape[1] <= images.STRIP_PIXELS
    monkeypatch.setattr(images, "STRIP_PIXELS", 1000)  # 1000 pixels: a strip of 1 or 2 rows
    np.testing.assert_array_equal(load_image(source), whole, err_msg=case)
    np.testing.assert_array_equal(images.load_model_input(source, 40)[0], skinmole.to_model_input(whole, 40))


def test_hxw_array_is_gray_rgb(gray, prob):
    assert prob(gray) == pytest.approx(prob(np.dstack([gray] * 3)), abs=PROB_TOL)


def test_palette_png_and_the_first_frame_of_an_animated_gif(rgb, prob, tmp_path):
    pal = Image.fromarray(rgb).quantize(colors=200, dither=Image.Dither.NONE)
    expected = np.asarray(pal.convert("RGB"))
    png = _write(tmp_path, "pal.png", encode(pal, "PNG"))
    assert Image.open(png).mode == "P"
    np.testing.assert_array_equal(load_image(png), expected)

    h, w = rgb.shape[:2]
    frames = [pal, Image.new("RGB", (w, h), (0, 0, 0)).quantize(), Image.new("RGB", (w, h), (255, 255, 255)).quantize()]
    gif = _write(tmp_path, "anim.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                              duration=100, loop=0))
    assert Image.open(gif).n_frames == 3
    np.testing.assert_array_equal(load_image(gif), expected)
    assert prob(str(gif)) == pytest.approx(prob(expected), abs=PROB_TOL)
    assert prob(str(png)) == pytest.approx(prob(expected), abs=PROB_TOL)


def test_transparency_is_composited_on_white(rgb):
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0     # fully transparent corner: white
    rgba[-10:, -10:, 3] = 128  # half transparent corner: halfway to white
    out = load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (out[:10, :10] == 255).all()
    half = out[-10:, -10:].astype(int)
    expected = rgb[-10:, -10:].astype(int) + (255 - rgb[-10:, -10:].astype(int)) * 127 / 255
    assert np.abs(half - expected).max() <= 1.5
    np.testing.assert_array_equal(out[20:, :-20], rgb[20:, :-20])  # opaque pixels untouched


def test_cmyk_jpeg_keeps_its_colours(rgb, prob):
    data = encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = load_image(data)
    assert np.abs(out.astype(int) - rgb).mean() < 3  # inverted CMYK would be ~100 away
    assert 0.0 <= prob(data) <= 1.0


def test_lab_tiff_keeps_its_colours(rgb):
    out = load_image(encode(Image.fromarray(rgb).convert("LAB"), "TIFF"))
    assert np.abs(out.astype(int) - rgb).mean() < 2


def test_lossy_webp_and_jpeg_get_close_predictions(rgb, model):
    im = Image.fromarray(rgb)
    sources = [encode(im, "JPEG", quality=95)]
    if features.check("webp"):
        sources.append(encode(im, "WEBP", quality=95))
    for data in sources:
        assert np.abs(load_image(data).astype(int) - rgb).mean() < 3
        p = skinmole.predict(data, model, check_quality=False)
        assert 0.0 <= p.malignant_probability <= 1.0 and p.label in ("benign", "malignant")


def test_a_4000x3000_photo(rgb, model, tmp_path):
    big = Image.fromarray(rgb).resize((4000, 3000), Image.BICUBIC)
    path = _write(tmp_path, "photo.jpg", encode(big, "JPEG", quality=85))
    assert load_image(path).shape == (3000, 4000, 3)
    p = skinmole.predict(path, model, check_quality=False)
    assert 0.0 <= p.malignant_probability <= 1.0 and p.label in ("benign", "malignant")


# ---------------------------------------------------------------- EXIF orientation

# What the EXIF specification says each Orientation value means, written as the numpy operation that
# turns the stored pixels into the displayed image (independent of PIL's implementation).
EXIF_DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],                        # mirrored left-right
    3: lambda a: a[::-1, ::-1],                     # rotated 180
    4: lambda a: a[::-1, :],                        # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),              # row 0 = visual left, column 0 = visual top
    6: lambda a: np.rot90(a, -1),                   # row 0 = visual right, column 0 = visual top
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # row 0 = visual right, column 0 = visual bottom
    8: lambda a: np.rot90(a, 1),                    # row 0 = visual left, column 0 = visual bottom
}


def jpeg_with_orientation(stored: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_the_spec_defines(orientation, rgb):
    data = jpeg_with_orientation(rgb, orientation)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # the pixels as stored, not turned
    expected = np.ascontiguousarray(EXIF_DISPLAY[orientation](stored))
    np.testing.assert_array_equal(load_image(data), expected)
    np.testing.assert_array_equal(load_image(Image.open(io.BytesIO(data))), expected)  # PIL input too


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_in_lossless_formats(fmt, orientation, rgb):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("this Pillow cannot write WebP")
    exif = Image.Exif()
    exif[0x0112] = orientation
    kw = {"tiffinfo": {0x0112: orientation}} if fmt == "TIFF" else {"exif": exif.tobytes()}
    if fmt == "WEBP":
        kw.update(lossless=True, quality=100)
    data = encode(Image.fromarray(rgb), fmt, **kw)
    np.testing.assert_array_equal(load_image(data), np.ascontiguousarray(EXIF_DISPLAY[orientation](rgb)), err_msg=fmt)


def exif_with_many_tags(orientation: int, tags: int, region: int) -> bytes:
    """An EXIF block whose ``tags`` private tags all point at one ``region``-byte blob: a reader that
    copies every tag's data (as Pillow's getexif does) holds tags x region bytes."""
    entries = [struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)]
    blob_at = 8 + 2 + 12 * (tags + 1) + 4
    entries += [struct.pack("<HHII", 40000 + i, 7, region, blob_at) for i in range(tags)]
    return b"Exif\x00\x00II*\x00" + struct.pack("<IH", 8, tags + 1) + b"".join(entries) + b"\x00" * 4 + b"\x00" * region


def test_orientation_is_read_from_an_exif_block_of_many_large_tags(rgb):
    exif = exif_with_many_tags(6, tags=400, region=50_000)
    data = encode(Image.fromarray(rgb), "JPEG", quality=95, exif=exif)
    assert Image.open(io.BytesIO(data)).info["exif"].endswith(exif)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(load_image(data), np.ascontiguousarray(np.rot90(stored, -1)))


def test_exif_rotation_concretely_puts_the_top_left_corner_top_right():
    stored = np.zeros((60, 80, 3), np.uint8)
    stored[:30, :40] = (255, 0, 0)  # red top-left quadrant in the stored pixels
    out = load_image(jpeg_with_orientation(stored, 6))  # 6: "rotate 90 degrees clockwise to display"
    assert out.shape == (80, 60, 3)
    top_right = out[5:35, 35:55].reshape(-1, 3).mean(axis=0)
    top_left = out[5:35, 5:25].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200 and top_right[1] < 60, "the stored top-left corner must display top-right"
    assert top_left.max() < 60


def test_exif_rotated_jpeg_predicts_like_the_rotated_pixels(rgb, prob):
    data = jpeg_with_orientation(rgb, 6)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    manually = np.ascontiguousarray(np.rot90(stored, -1))
    assert prob(data) == pytest.approx(prob(manually), abs=PROB_TOL)


# ---------------------------------------------------------------- the one-step path predict uses

def _one_step_cases(rgb: np.ndarray) -> dict:
    cases = {kind: data for kind, data in _rgb_copies(rgb).items()}
    cases.update({f"JPEG EXIF {o}": jpeg_with_orientation(rgb, o) for o in range(1, 9)})
    cases["gray PNG"] = encode(Image.fromarray(rgb).convert("L"), "PNG")
    cases["palette PNG"] = encode(Image.fromarray(rgb).convert("P"), "PNG")
    cases["16-bit gray PNG"] = encode(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), "PNG")
    cases["float gray TIFF"] = encode(Image.fromarray(rgb[..., 1].astype(np.float32) / 255), "TIFF")
    cases["RGBA PNG, partly transparent"] = encode(STRIP_CASES["RGBA, partly transparent"](rgb), "PNG")
    cases["transparent palette PNG"] = encode(_transparent_palette(rgb), "PNG")
    cases["JPEG at the model size"] = encode(Image.fromarray(rgb).resize((32, 32)), "JPEG")
    cases["array"] = rgb
    cases["PIL image"] = Image.open(io.BytesIO(jpeg_with_orientation(rgb, 6)))
    return cases


@pytest.mark.parametrize("size", [32, 128])
def test_load_model_input_gives_the_pixels_of_load_image_then_to_model_input(rgb, size, tmp_path):
    for kind, source in _one_step_cases(rgb).items():
        if kind == "JPEG at the model size" and size != 32:
            continue
        expected = skinmole.to_model_input(load_image(source), size)
        for src in ((source, _write(tmp_path, "one_step.img", source)) if isinstance(source, bytes) else (source,)):
            got, (w, h) = images.load_model_input(src, size)
            np.testing.assert_array_equal(got, expected, err_msg=kind)
            assert got.shape == (size, size, 3) and got.dtype == np.uint8
            assert (h, w) == load_image(source).shape[:2], kind


def test_load_model_input_leaves_a_callers_pil_image_untouched(rgb):
    im = Image.open(io.BytesIO(jpeg_with_orientation(rgb, 6)))
    im.load()
    before = np.asarray(im).copy()
    images.load_model_input(im, 32)
    np.testing.assert_array_equal(np.asarray(im), before)
    assert im.getexif().get(0x0112) == 6


def test_load_model_input_raises_the_same_typed_error(tmp_path):
    with pytest.raises(InvalidImageError, match="not a recognised image"):
        images.load_model_input(b"not an image at all", 32)
    with pytest.raises(InvalidImageError, match="no such file"):
        images.load_model_input(tmp_path / "missing.jpg", 32)
