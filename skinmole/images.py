"""One path for an image: decode safely, then resize to the model's input.

``load_image`` accepts a path, bytes, a binary file object, a PIL image or a numpy array and returns
RGB uint8 (EXIF orientation applied, every PIL mode converted). ``to_model_input`` resizes; training
and inference both call it, so a served model sees exactly what it was trained on. ``load_model_input``
does both in one step with the same pixels (the hot path of ``predict``: no full-size array copies). Anything that is
not a complete, reasonably sized raster image raises ``InvalidImageError`` naming the input.
"""

from __future__ import annotations

import io
import struct
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from .errors import InvalidImageError  # noqa: F401  (defined in the leaf module; importable from here too)

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 64_000_000  # a 4000x3000 photo is 12 MP; anything past 64 MP is treated as a bomb
MIN_SIDE = 1
ALLOWED_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM", "TGA"}


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


def _read_bytes(source, name: str) -> bytes:
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            if not path.exists():
                raise InvalidImageError(f"{name}: no such file")
            if path.is_dir():
                raise InvalidImageError(f"{name}: is a directory, not an image file")
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise InvalidImageError(f"{name}: file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
            # bounded read: a pipe or device (/dev/zero, <(...)) reports size 0 and may never end
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:  # also from exists()/stat(), e.g. a name too long or a permission denied
            raise InvalidImageError(f"{name}: cannot be read ({exc.strerror or exc})") from exc
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


def _check_pixels(width: int, height: int, name: str) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InvalidImageError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise InvalidImageError(
            f"{name}: declared size {width}x{height} is over the {MAX_PIXELS}-pixel limit "
            "(possible decompression bomb)"
        )


def _decode(data: bytes, name: str) -> Image.Image:
    if not data:
        raise InvalidImageError(f"{name}: file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = im.format
            if fmt not in ALLOWED_FORMATS:
                raise InvalidImageError(f"{name}: {fmt} is not a supported raster image format")
            _check_pixels(*im.size, name)
            im.seek(0)  # animated images: the first frame
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # our own image: no copy when upright
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(f"{name}: image is too large (possible decompression bomb)") from exc
    except Image.UnidentifiedImageError as exc:
        raise InvalidImageError(f"{name}: not a recognised image (corrupt, or another kind of file)") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        raise InvalidImageError(f"{name}: image data is truncated or corrupt ({exc})") from exc
    return im




def _pil_to_rgb(im: Image.Image, name: str) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if (mode.startswith("I;16") or arr.max(initial=0) > 255) else 255.0
        if mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0
        gray = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    try:
        rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    except ValueError as exc:  # a mode PIL cannot convert to RGB (e.g. premultiplied "La")
        raise InvalidImageError(f"{name}: unsupported colour mode {mode} ({exc})") from exc
    return np.ascontiguousarray(rgb)


def _array_to_rgb(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InvalidImageError(f"{name}: array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    _check_pixels(arr.shape[1], arr.shape[0], name)
    if arr.dtype == np.uint8:
        pass  # the common case: already 0..255, no range scan or copy needed
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = np.rint(arr / 257.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InvalidImageError(f"{name}: array contains NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            raise InvalidImageError(
                f"{name}: float arrays must hold values in 0..1 (pass uint8 for 0..255 pixels)"
            )
        arr = np.rint(arr * 255.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise InvalidImageError(f"{name}: integer arrays must hold values in 0..255")
        arr = arr.astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InvalidImageError(f"{name}: unsupported array dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[2] == 4:
        return _pil_to_rgb(Image.fromarray(arr, "RGBA"), name)
    return np.ascontiguousarray(arr)


def load_image(source, name: str | None = None) -> np.ndarray:
    """Decode ``source`` to an RGB uint8 array (H, W, 3), or raise ``InvalidImageError``."""
    name = name or describe(source)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, name)
    if isinstance(source, Image.Image):
        _check_pixels(*source.size, name)
        try:
            source.load()
            im = ImageOps.exif_transpose(source)
        except (OSError, ValueError) as exc:
            raise InvalidImageError(f"{name}: image data is truncated or corrupt ({exc})") from exc
        return _pil_to_rgb(im, name)
    return _pil_to_rgb(_decode_source(source, name), name)


def _decode_source(source, name: str) -> Image.Image:
    """A path (any os.PathLike), bytes or binary file, read within the limits and decoded."""
    if isinstance(source, os.PathLike) and not isinstance(source, Path):
        source = Path(os.fspath(source))
    return _decode(_read_bytes(source, name), name)


def _resize(im: Image.Image, size: int) -> np.ndarray:
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def to_model_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize RGB uint8 to ``size`` x ``size`` (bilinear with antialiasing), the model's input."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return _resize(Image.fromarray(rgb), size)


def load_model_input(source, size: int, name: str | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """``(to_model_input(load_image(source), size), (width, height) of the decoded image)``: the same
    pixels, but an RGB file is resized straight from the decoder, without two full-size copies."""
    name = name or describe(source)
    if isinstance(source, (np.ndarray, Image.Image)):
        rgb = load_image(source, name)
    else:
        im = _decode_source(source, name)
        if im.mode == "RGB":
            return _resize(im, size), im.size
        rgb = _pil_to_rgb(im, name)
    return to_model_input(rgb, size), (int(rgb.shape[1]), int(rgb.shape[0]))
