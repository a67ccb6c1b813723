from pathlib import Path

import numpy as np
import pytest

from edgepure.runtime.errors import ImageDecodeError
from edgepure.runtime.imageio import decode_image, decode_pnm, encode_ppm, read_image, write_ppm


def test_ppm_roundtrip(tmp_path: Path) -> None:
    img = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    write_ppm(tmp_path / "a.ppm", img)
    np.testing.assert_array_equal(read_image(tmp_path / "a.ppm"), img)
    assert not list(tmp_path.glob("*.tmp"))


def test_header_comments_and_grey() -> None:
    data = b"P5\n# made by hand\n2 1\n# max\n255\n" + bytes([0, 200])
    img = decode_pnm(data)
    assert img.shape == (1, 2, 3)
    assert img[0, 1].tolist() == [200, 200, 200]


def test_sixteen_bit_is_scaled() -> None:
    data = b"P6 1 1 65535\n" + np.array([65535, 0, 32768], dtype=">u2").tobytes()
    assert decode_pnm(data)[0, 0].tolist() == [255, 0, 128]


def test_truncated_image_names_file(tmp_path: Path) -> None:
    p = tmp_path / "cut.ppm"
    p.write_bytes(encode_ppm(np.zeros((4, 4, 3), np.uint8))[:-5])
    with pytest.raises(ImageDecodeError, match=r"cut\.ppm.*truncated.*expected 48 bytes.*found 43"):
        read_image(p)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"P6\n4 4\n", "truncated PNM header"),
        (b"P6\nx 4 255\n", "bad PNM header field"),
        (b"P6\n0 4 255\n", "invalid PNM size"),
        (b"", "empty file"),
    ],
)
def test_bad_headers(data: bytes, pattern: str) -> None:
    with pytest.raises(ImageDecodeError, match=pattern):
        decode_image(data, "x.ppm")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="no such image file"):
        read_image(tmp_path / "nope.ppm")


def test_png_through_pillow(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")
    img = np.random.default_rng(1).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), img)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageDecodeError, match="bad.png: cannot decode"):
        read_image(tmp_path / "bad.png")
