"""Image decoding with numpy only: binary PPM/PGM natively, other formats through Pillow when installed.

GTSRB ships as binary PPM (P6), so the data readers and the camera loop's ``file://`` source need nothing
beyond numpy. Every failure names the file and says what was expected and what was found.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgepure.runtime.errors import ImageDecodeError, MissingDependencyError

__all__ = ["decode_image", "decode_pnm", "encode_ppm", "read_image", "write_ppm"]

_WHITESPACE = b" \t\r\n\x0b\x0c"


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
    """Decode image bytes into ``H×W×3`` uint8 RGB. PPM/PGM natively; PNG, JPEG, BMP… through Pillow."""
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
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: cannot decode the image ({exc})") from None


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file into ``H×W×3`` uint8 RGB."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{p}: no such image file") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{p}: is a directory, expected an image file") from None
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
