"""One path for an image: decode safely, then resize to the model's input.

``load_image`` accepts a path, bytes, a binary file object, a PIL image or a numpy array and returns
RGB uint8 (EXIF orientation applied, every PIL mode converted). ``to_model_input`` resizes; training
and inference both call it, so a served model sees exactly what it was trained on. ``load_model_input``
does both in one step with the same pixels (the hot path of ``predict``: no full-size array copies).
Anything that is not a complete, reasonably sized raster image raises ``InvalidImageError`` naming
the input and the reason.

Every input is answered or refused in bounded time and memory: the limits below are checked before
the decoder allocates or loops (file bytes, declared pixels, decoded bytes, JPEG scans and segments,
parser reads, TIFF tag data),
and conversions to RGB run in row strips, so no full-size float or RGBA temporary is ever made.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageMode

from .errors import InvalidImageError  # noqa: F401  (defined in the leaf module; importable from here too)

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 64_000_000  # a 4000x3000 photo is 12 MP; anything past 64 MP is treated as a bomb
# What the decoded image may hold, in bytes: width x height x bytes per pixel of its mode (RGB 3,
# RGBA/CMYK/32-bit 4, 16-bit gray 2, gray 1). An 8-bit RGB image at the pixel limit just fits.
MAX_DECODED_BYTES = 3 * MAX_PIXELS
# A progressive JPEG has about 10 scans; each one is a pass over the whole image, so a file that
# repeats a tiny scan thousands of times decodes for minutes (Pillow sets libjpeg no scan limit).
MAX_JPEG_SCANS = 32
MAX_JPEG_SEGMENTS = 1000  # markers before the end of the first image (a real JPEG has tens)
# Pillow's container parsers run in Python, one read per chunk, block or marker: a file made of
# millions of tiny chunks parses for a minute at 50 MB. Real files need under 1 read per KiB.
MAX_PARSER_READS = 1000
MAX_PARSER_READS_PER_KIB = 8
STRIP_PIXELS = 1 << 20  # converted this many pixels at a time: temporaries stay a few MB
MIN_SIDE = 1
ALLOWED_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM", "TGA"}

_GRAY_NUMBERS = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}  # one channel of 16/32-bit values


def describe(source) -> str:
    """A short, printable name for an input, for error messages and CLI output."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    if isinstance(source, np.ndarray):
        return f"<array {source.dtype} {source.shape}>"
    name = getattr(source, "name", None)
    return str(name) if isinstance(name, str) else f"<{type(source).__name__}>"


# ---------------------------------------------------------------- reading the bytes

def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _read_path(path: Path, name: str) -> bytes:
    """A regular file's bytes. Anything else is refused before it is opened, since a pipe or device
    may never end or never start (a FIFO with no writer blocks ``open`` forever); the descriptor is
    opened non-blocking and checked again, so a file swapped for a pipe in between cannot hang us."""
    try:
        info = os.stat(path)
    except ValueError as exc:  # e.g. an embedded NUL byte
        raise InvalidImageError(f"{name}: cannot be read ({exc})") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidImageError(f"{name}: symlink loop (too many levels of symbolic links)") from exc
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            broken = os.path.islink(path)
            raise InvalidImageError(f"{name}: {'broken symlink' if broken else 'no such file'}") from exc
        raise InvalidImageError(f"{name}: cannot be read ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(info.st_mode):
        raise InvalidImageError(f"{name}: is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise InvalidImageError(f"{name}: is {_file_kind(info.st_mode)}, not a regular file")
    if info.st_size > MAX_FILE_BYTES:
        raise InvalidImageError(f"{name}: file is {info.st_size} bytes, over the {MAX_FILE_BYTES}-byte limit")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
        with open(fd, "rb", closefd=True) as f:
            opened = os.fstat(fd).st_mode
            if not stat.S_ISREG(opened):
                raise InvalidImageError(f"{name}: is {_file_kind(opened)}, not a regular file")
            return f.read(MAX_FILE_BYTES + 1)  # the file may have grown since stat
    except OSError as exc:  # e.g. a permission denied, or an I/O error
        raise InvalidImageError(f"{name}: cannot be read ({exc.strerror or exc})") from exc


def _read_bytes(source, name: str) -> bytes:
    if isinstance(source, (str, Path)):
        data = _read_path(Path(source), name)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        try:
            data = source.read(MAX_FILE_BYTES + 1)
        except UnicodeDecodeError as exc:  # a text-mode file holding binary data
            raise InvalidImageError(f"{name}: file object must be opened in binary mode") from exc
        except (OSError, ValueError) as exc:  # e.g. a closed file
            raise InvalidImageError(f"{name}: cannot be read ({exc})") from exc
        if not isinstance(data, (bytes, bytearray)):
            raise InvalidImageError(f"{name}: file object must be opened in binary mode")
        data = bytes(data)
    else:
        raise InvalidImageError(
            f"{name}: unsupported input type {type(source).__name__}; "
            "pass a path, bytes, a binary file, a PIL image or a numpy array"
        )
    if len(data) > MAX_FILE_BYTES:
        raise InvalidImageError(f"{name}: data is over the {MAX_FILE_BYTES}-byte limit")
    return data


# ---------------------------------------------------------------- the limits, checked before decoding

def _check_pixels(width: int, height: int, name: str) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InvalidImageError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise InvalidImageError(
            f"{name}: declared size {width}x{height} is over the {MAX_PIXELS}-pixel limit "
            "(possible decompression bomb)"
        )


def _check_decoded_bytes(mode: str, width: int, height: int, name: str) -> None:
    """The pixel limit, and the bytes the decoder will hold for this mode (16-bit and RGBA cost more)."""
    _check_pixels(width, height, name)
    try:
        desc = ImageMode.getmode(mode)
    except KeyError as exc:
        raise InvalidImageError(f"{name}: unsupported colour mode {mode}") from exc
    decoded = width * height * len(desc.bands) * np.dtype(desc.typestr).itemsize
    if decoded > MAX_DECODED_BYTES:
        raise InvalidImageError(
            f"{name}: {width}x{height} {mode} decodes to {decoded} bytes, over the "
            f"{MAX_DECODED_BYTES}-byte limit (possible decompression bomb)"
        )


# a marker where entropy-coded data may be: 0xFF00 is a stuffed byte, RSTn belong to the scan, and a
# run of 0xFF is fill before the marker
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _check_jpeg_scans(data: bytes, name: str) -> None:
    """Count the scans of the first image (up to its EOI: an MPO's later images are not decoded)
    before libjpeg runs them; walking the markers skips each segment by its length."""
    scans = segments = 0
    pos = 0
    while True:
        found = _JPEG_MARKER.search(data, pos)
        if found is None:
            return  # truncated: the decoder says so
        marker, pos = data[found.end() - 1], found.end()
        if marker == 0xD9:  # EOI
            return
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise InvalidImageError(
                f"{name}: JPEG has over {MAX_JPEG_SEGMENTS} segments (a real photo has tens); refused"
            )
        if marker in (0xD8, 0x01):  # SOI, TEM: no length
            continue
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise InvalidImageError(
                    f"{name}: JPEG has over {MAX_JPEG_SCANS} scans (a progressive photo has about 10); "
                    "refused, since every scan is another pass over the whole image"
                )
        pos += int.from_bytes(data[pos:pos + 2], "big")


# bytes per value of each TIFF field type (TIFF 6.0 and BigTIFF); types not listed are skipped by readers
_TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8,
                    18: 8}


def _tiff_entries(blob: bytes):
    """``(tag, type, count, value field)`` of the first IFD of a TIFF structure (a TIFF file or an
    EXIF block), read with bounds checks; nothing for bytes that are not one."""
    order = {b"II": "<", b"MM": ">"}.get(blob[:2])
    if order is None or len(blob) < 16:
        return
    magic = struct.unpack_from(order + "H", blob, 2)[0]
    big = magic == 43
    if magic not in (42, 43):
        return
    head, entry_size, count_fmt = (order + "Q", 20, "HHQ8s") if big else (order + "I", 12, "HHI4s")
    offset = struct.unpack_from(head, blob, 8 if big else 4)[0]
    if offset + (8 if big else 2) > len(blob):
        return
    count = struct.unpack_from(order + ("Q" if big else "H"), blob, offset)[0]
    first = offset + (8 if big else 2)
    count = min(count, (len(blob) - first) // entry_size)
    for i in range(count):
        yield struct.unpack_from(order + count_fmt, blob, first + i * entry_size) + (order, big)


def _check_tiff_tags(data: bytes, name: str) -> None:
    """Pillow reads every tag's data when it opens a TIFF, and keeps it: tags that all point at the
    same large region would each hold a copy (60 such tags in a 10 MB file take 1.2 GB). The data
    of real tags never overlaps, so it fits in the file."""
    declared = 0
    for _, kind, count, _, _, big in _tiff_entries(data):
        size = count * _TIFF_TYPE_BYTES.get(kind, 0)
        if size > (8 if big else 4):  # larger values live outside the entry
            declared += size
            if declared > len(data):
                raise InvalidImageError(f"{name}: TIFF tags declare more data than the file holds; refused")


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # EXIF Orientation -> the operation that displays the image


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF Orientation tag, read from the first IFD only. Pillow's getexif() would load every tag
    (the same copying as in _check_tiff_tags) for the one number needed here."""
    if hasattr(im, "tag_v2"):  # a TIFF: its tags were parsed (and checked) when it was opened
        return int(im.tag_v2.get(274, 1) or 1)
    blob = im.info.get("exif")
    if not isinstance(blob, (bytes, bytearray)):
        return 1
    blob = bytes(blob).removeprefix(b"Exif\x00\x00")
    for tag, kind, count, value, order, _ in _tiff_entries(blob):
        if tag == 274 and kind == 3 and count == 1:
            return struct.unpack_from(order + "H", value)[0]
    return 1


def _upright(im: Image.Image) -> Image.Image:
    method = _TRANSPOSE.get(_exif_orientation(im))
    return im if method is None else im.transpose(method)


class _BoundedReader(io.BytesIO):
    """The encoded bytes, refusing once Pillow's Python parsers have made too many reads."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name_for_errors = name
        self.reads_left = MAX_PARSER_READS + MAX_PARSER_READS_PER_KIB * (len(data) >> 10)

    def _count(self) -> None:
        self.reads_left -= 1
        if self.reads_left < 0:
            raise InvalidImageError(
                f"{self.name_for_errors}: the file's structure is made of too many small pieces "
                "(chunks, blocks or markers) to parse in reasonable time; refused"
            )

    def read(self, size=-1, /):
        self._count()
        return super().read(size)

    def read1(self, size=-1, /):
        self._count()
        return super().read1(size)

    def readinto(self, buffer, /):
        self._count()
        return super().readinto(buffer)

    def readline(self, size=-1, /):
        self._count()
        return super().readline(size)


# ---------------------------------------------------------------- decoding

_CORRUPT = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error,
            ZeroDivisionError, OverflowError)  # what Pillow's plugins raise on malformed data


def _opened_formats() -> list[str]:
    """The accepted formats Pillow has an opener for (MPO files are opened by the JPEG one)."""
    Image.init()
    return [fmt for fmt in sorted(ALLOWED_FORMATS) if fmt in Image.OPEN]


def _other_format(data: bytes) -> str | None:
    """The format Pillow would take these bytes for by their first bytes alone (no parser runs),
    to say "EPS is not supported" rather than "not an image"."""
    Image.init()
    for fmt, (_, accept) in Image.OPEN.items():
        try:
            if fmt not in ALLOWED_FORMATS and accept is not None and accept(data[:64]) is True:
                return fmt
        except Exception:  # noqa: BLE001 - a plugin's prefix check; any failure means "not this one"
            continue
    return None


def _decode(data: bytes, name: str) -> Image.Image:
    if not data:
        raise InvalidImageError(f"{name}: file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
                _check_tiff_tags(data, name)
            try:  # only the accepted formats' parsers ever see the bytes
                im = Image.open(_BoundedReader(data, name), formats=_opened_formats())
            except Image.UnidentifiedImageError:
                other = _other_format(data)
                if other:
                    raise InvalidImageError(f"{name}: {other} is not a supported raster image format") from None
                raise
            fmt = im.format
            if fmt not in ALLOWED_FORMATS:
                raise InvalidImageError(f"{name}: {fmt} is not a supported raster image format")
            _check_decoded_bytes(im.mode, *im.size, name)
            if fmt in ("JPEG", "MPO"):
                _check_jpeg_scans(data, name)
            im.seek(0)  # animated images: the first frame
            im.load()
            im = _upright(im)
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(f"{name}: image is too large (possible decompression bomb)") from exc
    except Image.UnidentifiedImageError as exc:
        raise InvalidImageError(f"{name}: not a recognised image (corrupt, or another kind of file)") from exc
    except MemoryError as exc:
        raise InvalidImageError(f"{name}: not enough memory to decode this image") from exc
    except _CORRUPT as exc:
        raise InvalidImageError(f"{name}: image data is truncated or corrupt ({exc})") from exc
    return im


def _decode_source(source, name: str) -> Image.Image:
    """A path (any os.PathLike), bytes or binary file, read within the limits and decoded."""
    if isinstance(source, os.PathLike) and not isinstance(source, Path):
        path = os.fspath(source)
        source = Path(path if isinstance(path, str) else os.fsdecode(path))
    return _decode(_read_bytes(source, name), name)


# ---------------------------------------------------------------- any mode -> uint8, in row strips

def _strips(height: int, width: int):
    rows = max(1, STRIP_PIXELS // max(1, width))
    for top in range(0, height, rows):
        yield top, min(height, top + rows)


def _in_strips(im: Image.Image, convert) -> np.ndarray:
    """``convert`` (PIL strip -> uint8 array) applied to row strips of ``im``, joined: the same pixels
    as converting the whole image, since every conversion here works pixel by pixel."""
    width, height = im.size
    if width * height <= STRIP_PIXELS:
        return np.ascontiguousarray(convert(im))
    out = None
    for top, bottom in _strips(height, width):
        part = convert(im.crop((0, top, width, bottom)))
        if out is None:
            out = np.empty((height,) + part.shape[1:], np.uint8)
        out[top:bottom] = part
    return out


def _gray_from_numbers(im: Image.Image, name: str) -> np.ndarray:
    """16-bit, 32-bit integer and float gray to 0..255: 16-bit by its full range; 32-bit integers and
    floats by the range their values use (0..1 floats, 0..255, else 0..65535)."""
    mode = im.mode
    if mode.startswith("I;16"):
        top = 65535.0
    else:
        if mode == "F":  # NaN and inf first: getextrema() would skip them
            high = 0.0
            for top_row, bottom in _strips(im.size[1], im.size[0]):
                part = np.asarray(im.crop((0, top_row, im.size[0], bottom)))
                if not np.isfinite(part).all():
                    raise InvalidImageError(f"{name}: image contains NaN or infinite values")
                high = max(high, float(part.max(initial=0)))
        else:
            high = max(0.0, float(im.getextrema()[1]))
        top = 65535.0 if high > 255 else 255.0
        if mode == "F" and high <= 1.0:
            top = 1.0
    scale = 255.0 / top
    return _in_strips(im, lambda part: np.clip(np.rint(np.asarray(part, dtype=np.float64) * scale), 0, 255)
                      .astype(np.uint8))


def _on_white(part: Image.Image) -> np.ndarray:
    rgba = part.convert("RGBA")
    return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
                      .convert("RGB"))


def _pil_pixels(im: Image.Image, name: str) -> np.ndarray:
    """uint8 pixels of any mode: (H, W) for one-channel images, (H, W, 3) RGB otherwise; transparency
    composited on white. Gray stays one channel so a huge 16-bit image costs 1 byte per pixel here."""
    mode = im.mode
    try:
        if mode in ("RGB", "L"):  # in strips too: asarray() of a whole image briefly holds it twice
            return _in_strips(im, np.asarray)
        if mode == "1":
            return np.asarray(im.convert("L"))
        if mode in _GRAY_NUMBERS:
            return _gray_from_numbers(im, name)
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
            return _in_strips(im, _on_white)
        return _in_strips(im, lambda part: np.asarray(part.convert("RGB")))
    except InvalidImageError:
        raise
    except ValueError as exc:  # a mode PIL cannot convert to RGB (e.g. premultiplied "La")
        raise InvalidImageError(f"{name}: unsupported colour mode {mode} ({exc})") from exc
    except MemoryError as exc:
        raise InvalidImageError(f"{name}: not enough memory to convert this image") from exc


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)


# ---------------------------------------------------------------- numpy arrays

def _uint8_strip(part: np.ndarray, name: str) -> np.ndarray:
    kind, size = part.dtype.kind, part.dtype.itemsize
    if kind == "b":
        return part.astype(np.uint8) * 255
    if kind == "u" and size == 2:  # either byte order
        return np.rint(part / 257.0).astype(np.uint8)
    if kind == "f":
        if not np.isfinite(part).all():
            raise InvalidImageError(f"{name}: array contains NaN or infinite values")
        if part.min() < 0 or part.max() > 1:
            raise InvalidImageError(f"{name}: float arrays must hold values in 0..1 (pass uint8 for 0..255 pixels)")
        return np.rint(part * 255.0).astype(np.uint8)
    if kind in "ui":
        if part.min() < 0 or part.max() > 255:
            raise InvalidImageError(f"{name}: integer arrays must hold values in 0..255")
        return part.astype(np.uint8)
    raise InvalidImageError(f"{name}: unsupported array dtype {part.dtype}")


def _array_pixels(arr: np.ndarray, name: str) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) from an array of any supported dtype, converted in row strips."""
    arr = np.asarray(arr)  # np.matrix and other subclasses: a plain array of the same values
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InvalidImageError(f"{name}: array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    _check_pixels(arr.shape[1], arr.shape[0], name)
    if arr.dtype != np.uint8:
        out = np.empty(arr.shape, np.uint8)
        for top, bottom in _strips(arr.shape[0], arr.shape[1]):
            out[top:bottom] = _uint8_strip(arr[top:bottom], name)
        arr = out
    if arr.ndim == 3 and arr.shape[2] == 4:
        return _pil_pixels(Image.fromarray(np.ascontiguousarray(arr), "RGBA"), name)
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------- the public functions

def _pixels(source, name: str) -> np.ndarray:
    """uint8 (H, W) gray or (H, W, 3) RGB of any accepted input, EXIF orientation applied."""
    if isinstance(source, np.ndarray):
        return _array_pixels(source, name)
    if isinstance(source, Image.Image):
        _check_decoded_bytes(source.mode, *source.size, name)
        try:
            source.load()
            im = _upright(source)  # a new image when turned: the caller's stays as it was
        except MemoryError as exc:
            raise InvalidImageError(f"{name}: not enough memory to decode this image") from exc
        except _CORRUPT as exc:
            raise InvalidImageError(f"{name}: image data is truncated or corrupt ({exc})") from exc
        return _pil_pixels(im, name)
    return _pil_pixels(_decode_source(source, name), name)


def load_image(source, name: str | None = None) -> np.ndarray:
    """Decode ``source`` to an RGB uint8 array (H, W, 3), or raise ``InvalidImageError``."""
    return _as_rgb(_pixels(source, name or describe(source)))


def _resize(im: Image.Image, size: int) -> np.ndarray:
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def _resized(pixels: np.ndarray, size: int) -> np.ndarray:
    if pixels.shape[0] == size and pixels.shape[1] == size:
        return pixels
    return _resize(Image.fromarray(pixels), size)


def to_model_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize RGB uint8 to ``size`` x ``size`` (bilinear with antialiasing), the model's input."""
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
        raise InvalidImageError(f"{describe(rgb)}: to_model_input takes RGB uint8 (H, W, 3); decode with load_image")
    return _resized(rgb, size)


def load_model_input(source, size: int, name: str | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """``(to_model_input(load_image(source), size), (width, height) of the decoded image)``: the same
    pixels, but an RGB file is resized straight from the decoder, and a gray one is resized before
    it becomes three channels (the resize works channel by channel), without full-size copies."""
    name = name or describe(source)
    if not isinstance(source, (np.ndarray, Image.Image)):
        im = _decode_source(source, name)
        if im.mode == "RGB":
            return _resize(im, size), im.size
        pixels = _pil_pixels(im, name)
        del im  # the decoded image can go before the resize needs its own copy
    else:
        pixels = _pixels(source, name)
    height, width = pixels.shape[:2]
    return _as_rgb(_resized(pixels, size)), (int(width), int(height))
