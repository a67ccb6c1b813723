"""Image decoding with numpy only: binary PPM/PGM natively, other formats through Pillow when installed.

GTSRB ships as binary PPM (P6), so the data readers and the camera loop's ``file://`` source need nothing
beyond numpy. Every failure names the file and says what was expected and what was found.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from edgepure.runtime.errors import ImageDecodeError, MissingDependencyError

__all__ = ["decode_image", "decode_pnm", "encode_ppm", "read_image", "write_ppm"]

_WHITESPACE = b" \t\r\n\x0b\x0c"
# Pillow opens what these name and nothing else: frames come from cameras and folders a user does not vet, and
# some of Pillow's other readers hand the bytes to external programs (EPS to Ghostscript)
_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "PPM")


def _header_tokens(data: bytes, count: int, name: str) -> tuple[list[int], int]:
    """Read ``count`` integer tokens after the magic number; return them and the offset of the pixel data."""
    tokens: list[int] = []
    pos = 2
    n = len(data)
    while len(tokens) < count:
        while pos < n and data[pos] in _WHITESPACE:
            pos += 1
        if pos < n and data[pos] == ord("#"):
            while pos < n and data[pos] not in b"\r\n":
                pos += 1
            continue
        start = pos
        while pos < n and data[pos] not in _WHITESPACE and data[pos] != ord("#"):
            pos += 1
        token = data[start:pos]
        if not token:
            raise ImageDecodeError(f"{name}: truncated PNM header (expected {count} numbers, found {len(tokens)})")
        if not token.isdigit():
            raise ImageDecodeError(f"{name}: bad PNM header field {token[:16]!r} (expected a positive integer)")
        if len(token) > 9:  # no image is that large, and int() refuses numbers of thousands of digits
            raise ImageDecodeError(f"{name}: PNM header field {token[:16].decode()}… is too large "
                                   f"({len(token)} digits, expected at most 9)")
        tokens.append(int(token))
    if pos >= n or data[pos] not in _WHITESPACE:
        raise ImageDecodeError(f"{name}: truncated PNM header (no whitespace before the pixel data)")
    return tokens, pos + 1


def decode_pnm(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode a binary PPM (P6) or PGM (P5) into an ``H×W×3`` uint8 array (grey is repeated to RGB)."""
    magic = data[:2]
    if magic not in (b"P6", b"P5"):
        raise ImageDecodeError(f"{name}: not a binary PPM/PGM file (expected magic 'P6' or 'P5', found {magic!r})")
    (width, height, maxval), offset = _header_tokens(data, 3, name)
    if width == 0 or height == 0 or not 0 < maxval < 65536:
        raise ImageDecodeError(f"{name}: invalid PNM size {width}x{height} or maxval {maxval}")
    channels = 3 if magic == b"P6" else 1
    itemsize = 1 if maxval < 256 else 2
    expected = width * height * channels * itemsize
    found = len(data) - offset
    if found < expected:
        raise ImageDecodeError(
            f"{name}: truncated image data (expected {expected} bytes for {width}x{height}, found {found})"
        )
    raw = np.frombuffer(data, dtype=np.uint8 if itemsize == 1 else ">u2", count=width * height * channels, offset=offset)
    img = raw.reshape(height, width, channels)
    if maxval != 255:
        img = np.round(img.astype(np.float64) * (255.0 / maxval)).astype(np.uint8)
    if channels == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img, dtype=np.uint8)


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode image bytes into ``H×W×3`` uint8 RGB. PPM/PGM natively; PNG, JPEG, BMP… through Pillow.

    16-bit images are scaled to 8 bits; pixels that have no 8-bit meaning (floats, 32-bit integers) are
    refused. Every failure is an :class:`ImageDecodeError` naming ``name``.
    """
    if data[:2] in (b"P6", b"P5"):
        return decode_pnm(data, name)
    if not data:
        raise ImageDecodeError(f"{name}: empty file (expected an image)")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise MissingDependencyError("pillow", f"decoding {name} (not a PPM/PGM image)", extra="camera") from None
    import io

    try:
        with Image.open(io.BytesIO(data), formats=_FORMATS) as im:
            im.load()
            if im.mode == "I" or im.mode.startswith("I;"):
                return _sixteen_bit_grey(np.asarray(im), name)
            if im.mode == "F":
                raise ImageDecodeError(f"{name}: floating-point pixels have no 8-bit RGB meaning "
                                       "(expected 8- or 16-bit pixels)")
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: cannot decode the image: not a recognised format, or its header is "
                               "corrupt (expected PPM/PGM, PNG, JPEG, BMP or WebP)") from None
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's parsers raise many types on bad data: all mean "corrupt"
        raise ImageDecodeError(f"{name}: cannot decode the image ({_reason(exc)})") from None


def _sixteen_bit_grey(arr: np.ndarray, name: str) -> np.ndarray:
    """Pillow's integer grey modes ("I;16…", and "I" that 16-bit PNG/PGM open as) → ``H×W×3`` uint8."""
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise ImageDecodeError(f"{name}: 32-bit integer pixels (values {lo}..{hi}) have no 8-bit meaning "
                               "(expected 8- or 16-bit pixels)")
    grey = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # v/257, rounded
    return np.repeat(grey[..., None], 3, axis=2)


def _reason(exc: BaseException) -> str:
    """One line about ``exc`` without object reprs such as ``<_io.BytesIO object at 0x…>``."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc))
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file into ``H×W×3`` uint8 RGB."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{p}: no such image file") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{p}: is a directory, expected an image file") from None
    except OSError as exc:
        raise ImageDecodeError(f"{p}: cannot read the file ({exc.strerror or type(exc).__name__})") from None
    return decode_image(data, str(p))


def encode_ppm(img: np.ndarray) -> bytes:
    """Encode an ``H×W×3`` uint8 array as binary PPM (P6)."""
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"encode_ppm expects an H×W×3 uint8 array, got shape {arr.shape} dtype {arr.dtype}")
    h, w, _ = arr.shape
    return f"P6\n{w} {h}\n255\n".encode() + np.ascontiguousarray(arr).tobytes()


def write_ppm(path: str | os.PathLike[str], img: np.ndarray) -> None:
    """Write an ``H×W×3`` uint8 array as a binary PPM file (written to a temporary name, then renamed)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(encode_ppm(img))
    os.replace(tmp, p)
