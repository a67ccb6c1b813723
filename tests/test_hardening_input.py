"""Issue 44, the runtime's input side: ROIs, 16-bit images, corrupt videos, decoder crashes, empty runs."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepure.runtime.errors import ConfigError, ImageDecodeError
from edgepure.runtime.imageio import decode_image, decode_pnm, encode_ppm, read_image
from edgepure.runtime.preprocess import crop_roi
from edgepure.runtime.stream import Runner, run_stream
from edgepure.runtime.stream.sources import (ArraySource, BadFrameError, FolderSource, OpenCVSource, as_rgb,
                                             open_source)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``edgepure ARGS`` in a fresh interpreter."""
    script = textwrap.dedent(f"""
        import sys
        sys.argv = ["edgepure", *{list(args)!r}]
        from edgepure.cli.main import main
        main()
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def runner(model_dirs: dict[str, Path]) -> Runner:
    r = Runner.from_directory(model_dirs["plain"], threads=1)
    yield r
    r.close()


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, pixels: bytes) -> bytes:
    """A PNG written by hand (filter 0 on every row), for the layouts Pillow cannot write."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = len(pixels) // height
    raw = b"".join(b"\x00" + pixels[y * row:(y + 1) * row] for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# -- item 2: ROIs outside the frame -------------------------------------------------------------------

def test_cli_roi_rejects_nan_infinity_and_less_than_a_pixel() -> None:
    from edgepure.cli.run import _roi

    for text in ("nan,0,10,10", "0,inf,10,10", "0,0,-inf,10", "0,0,10,nan", "0,0,0.5,10", "0,0,10,0.9"):
        with pytest.raises(ConfigError, match="--roi"):
            _roi(text)
    assert _roi("3,4,1,1") == (3.0, 4.0, 3.0, 4.0)  # one pixel: inclusive corners
    assert _roi("1000,1000,10,10") == (1000.0, 1000.0, 1009.0, 1009.0)  # the frame size is not known here


def test_an_roi_outside_the_frame_is_an_error_naming_roi_and_frame() -> None:
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ConfigError, match=r"ROI .*1000.*1009.* outside the 32×32 frame"):
        crop_roi(img, (1000, 1000, 1009, 1009))
    with pytest.raises(ConfigError, match="outside the 32×32 frame"):
        crop_roi(img, (-20, 5, -10, 9))
    with pytest.raises(ConfigError, match="less than one pixel"):
        crop_roi(img, (31.5, 0, 40, 9))  # only half a pixel of it lies in the frame
    with pytest.raises(ConfigError, match="NaN or infinite"):
        crop_roi(img, (float("nan"), 0, 9, 9))
    with pytest.raises(ConfigError, match="is empty"):
        crop_roi(img, (10, 10, 5, 20))
    # partial overlap is clipped, as before
    assert crop_roi(img, (-5, -5, 100, 100)).shape == (32, 32, 3)
    assert crop_roi(img, (30, 30, 40, 40)).shape == (2, 2, 3)
    assert crop_roi(img, (7, 7, 7, 7)).shape == (1, 1, 3)  # a one-pixel ROI


def test_classify_checks_each_frames_roi(runner: Runner) -> None:
    model = runner.model
    small, big = np.zeros((32, 32, 3), np.uint8), np.zeros((200, 200, 3), np.uint8)
    roi = (100, 100, 131, 131)
    assert len(model.classify([big], rois=[roi])) == 1
    with pytest.raises(ConfigError, match="outside the 32×32 frame"):
        model.classify([small], rois=[roi])
    with pytest.raises(ConfigError, match="outside the 32×32 frame"):
        model.classify([big, small], rois=[roi, roi])


def test_an_roi_outside_a_known_frame_size_fails_at_start_up(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    r = Runner.from_directory(model_dirs["plain"], threads=1, roi=(1000, 1000, 1009, 1009))
    try:
        with pytest.raises(ConfigError, match="outside the 32×32 frame"):
            run_stream(open_source("synth://?n=5&size=32"), r)
        frames = np.zeros((3, 40, 50, 3), np.uint8)
        with pytest.raises(ConfigError, match="outside the 50×40 frame"):
            run_stream(ArraySource(frames), r)
        mjpg_avi(tmp_path / "clip.avi", n=3)
        with pytest.raises(ConfigError, match="outside the 48×48 frame"):
            run_stream(open_source(str(tmp_path / "clip.avi")), r)
    finally:
        r.close()


def test_a_budget_runner_accepts_an_roi_beyond_its_dummy_frame(model_dirs: dict[str, Path]) -> None:
    r = Runner.from_directory(model_dirs["plain"], threads=1, roi=(300, 200, 331, 231), budget_ms=1000)
    r.close()


def test_an_roi_outside_some_frames_counts_those_frames_as_errors(runner: Runner, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "0.ppm").write_bytes(encode_ppm(np.zeros((32, 32, 3), np.uint8)))
    (folder / "1.ppm").write_bytes(encode_ppm(np.zeros((200, 200, 3), np.uint8)))
    runner.roi = (100, 100, 131, 131)
    try:
        s = run_stream(FolderSource(str(folder), folder), runner)
    finally:
        runner.roi = None
    assert s["frames"] == 1 and s["errors"] == 1 and s["stop"] == "end of stream"


def test_cli_roi_outside_the_synth_frame_is_a_clear_error(model_dirs: dict[str, Path]) -> None:
    r = run_cli("run", "synth://?n=5", "--headless", "--roi", "1000,1000,10,10", "--model", str(model_dirs["plain"]))
    assert r.returncode == 1, r.stderr
    assert "error: ROI" in r.stderr and "32×32" in r.stderr and "Traceback" not in r.stderr, r.stderr


# -- item 3: 16-bit images -------------------------------------------------------------------------------

def test_a_16_bit_grey_png_is_scaled_to_8_bit() -> None:
    Image = pytest.importorskip("PIL.Image")
    values = np.linspace(0, 65535, 64).round().astype(np.uint16).reshape(4, 16)
    expected = values / 257.0
    im = Image.new("I;16", (16, 4))
    im.frombytes(values.astype("<u2").tobytes())
    buf = io.BytesIO()
    im.save(buf, "PNG")
    for data in (buf.getvalue(), png_bytes(16, 4, 16, 0, values.astype(">u2").tobytes())):
        out = decode_image(data, "grey16.png")
        assert out.shape == (4, 16, 3) and out.dtype == np.uint8
        assert np.abs(out[..., 0] - expected).max() <= 0.51
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_a_16_bit_rgb_png_is_scaled_to_8_bit() -> None:
    values = np.linspace(0, 65535, 4 * 8 * 3).round().astype(np.uint16).reshape(4, 8, 3)
    out = decode_image(png_bytes(8, 4, 16, 2, values.astype(">u2").tobytes()), "rgb16.png")
    assert out.shape == (4, 8, 3) and out.dtype == np.uint8
    assert np.abs(out - values / 257.0).max() <= 1.0
    rgba = np.concatenate([values, np.full((4, 8, 1), 65535, np.uint16)], axis=2)
    out = decode_image(png_bytes(8, 4, 16, 6, rgba.astype(">u2").tobytes()), "rgba16.png")
    assert np.abs(out - values / 257.0).max() <= 1.0


def test_a_16_bit_plain_pgm_through_pillow_is_scaled() -> None:
    out = decode_image(b"P2 2 2 65535 0 1000 32768 65535\n", "plain.pgm")
    assert out[..., 0].tolist() == [[0, 4], [128, 255]]


def test_pixels_that_do_not_fit_8_bit_are_refused() -> None:
    Image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    Image.fromarray(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)).save(buf, "PPM")  # a float PFM
    with pytest.raises(ImageDecodeError, match="x.pfm: floating-point pixels"):
        decode_image(buf.getvalue(), "x.pfm")


def test_formats_outside_the_list_are_not_handed_to_pillow() -> None:
    """TIFF, GIF, EPS…: Pillow could open them (EPS through Ghostscript), a camera frame is none of them."""
    Image = pytest.importorskip("PIL.Image")
    for fmt in ("TIFF", "GIF"):
        buf = io.BytesIO()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, fmt)
        with pytest.raises(ImageDecodeError, match="not a recognised format"):
            decode_image(buf.getvalue(), f"x.{fmt.lower()}")
    with pytest.raises(ImageDecodeError, match="not a recognised format"):
        decode_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 4 4\nshowpage\n", "x.eps")


def test_as_rgb_refuses_16_bit_frames() -> None:
    with pytest.raises(BadFrameError, match="8-bit"):
        as_rgb(np.zeros((4, 4, 3), np.uint16), "cam")


# -- item 4: corrupt frames in a video -------------------------------------------------------------------

def mjpg_avi(path: Path, n: int = 60, size: int = 48) -> list[int]:
    """Write an MJPG AVI of ``n`` frames; return the file offset of each frame's ``00dc`` chunk."""
    cv2 = pytest.importorskip("cv2")
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (size, size))
    for i in range(n):
        w.write(np.full((size, size, 3), (i * 4) % 256, np.uint8))
    w.release()
    data = path.read_bytes()
    pos, offsets = data.index(b"movi"), []
    while len(offsets) < n:
        pos = data.index(b"00dc", pos + 4)
        offsets.append(pos)
    return offsets


def test_corrupt_frames_in_a_video_are_bad_frames_and_reading_goes_on(runner: Runner, tmp_path: Path) -> None:
    video = tmp_path / "clip.avi"
    offsets = mjpg_avi(video)
    data = bytearray(video.read_bytes())
    for k in (30, 31, 32):  # zero the JPEG data of three frames in the middle
        start = offsets[k] + 8
        size = struct.unpack("<I", data[offsets[k] + 4:start])[0]
        data[start:start + size] = bytes(size)
    video.write_bytes(bytes(data))
    seen: list[str] = []
    s = run_stream(open_source(str(video)), runner, on_record=lambda r: seen.append(r["source"]))
    assert s["stop"] == "end of stream" and s["frames"] == 57 and s["bad_frames"] == 3, s
    assert seen[29:31] == ["frame000029", "frame000033"]  # frames keep their number in the file


def test_a_truncated_video_ends_with_the_missing_frames_reported(runner: Runner, tmp_path: Path) -> None:
    video = tmp_path / "cut.avi"
    offsets = mjpg_avi(video)
    video.write_bytes(video.read_bytes()[:offsets[45]])
    s = run_stream(open_source(str(video)), runner)
    assert s["stop"] == "end of stream" and 44 <= s["frames"] <= 45 and s["bad_frames"] >= 1, s


def test_a_clean_video_has_no_bad_frames(tmp_path: Path) -> None:
    video = tmp_path / "clean.avi"
    mjpg_avi(video, n=20)
    src = OpenCVSource(str(video), "video", str(video), {})
    src.open()
    try:
        frames = []
        while (f := src.read()) is not None:
            frames.append(f.index)
    finally:
        src.close()
    assert frames == list(range(20))


# -- item 5: decoder exceptions are bad frames -------------------------------------------------------------

def bomb_png() -> bytes:
    return png_bytes(20000, 20000, 8, 2, b"\x00" * 60000)[:200]  # claims 400 M pixels


def forged_bmp() -> bytes:
    Image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, "BMP")
    data = bytearray(buf.getvalue())
    struct.pack_into("<ii", data, 18, 40000, 40000)  # width and height of the header
    return bytes(data)


def test_decompression_bombs_and_forged_headers_are_decode_errors(tmp_path: Path) -> None:
    for name, data in (("bomb.png", bomb_png()), ("forged.bmp", forged_bmp())):
        with pytest.raises(ImageDecodeError, match=name):
            decode_image(data, name)
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageDecodeError, match=name):
            read_image(tmp_path / name)


def test_a_folder_with_a_bomb_and_a_forged_bmp_counts_them_as_bad_frames(runner: Runner, tmp_path: Path) -> None:
    (tmp_path / "a_bomb.png").write_bytes(bomb_png())
    (tmp_path / "b_forged.bmp").write_bytes(forged_bmp())
    (tmp_path / "c_good.ppm").write_bytes(encode_ppm(np.zeros((32, 32, 3), np.uint8)))
    s = run_stream(FolderSource(str(tmp_path), tmp_path), runner)
    assert s["frames"] == 1 and s["bad_frames"] == 2 and s["stop"] == "end of stream", s


# -- item 12: nothing read is a failure; one clean line per bad frame ----------------------------------------

def test_the_bad_frame_message_is_one_clean_line(tmp_path: Path) -> None:
    path = tmp_path / "junk.png"
    path.write_bytes(b"this is not an image")
    src = FolderSource(str(tmp_path), tmp_path)
    src.open()
    with pytest.raises(BadFrameError) as info:
        src.read()
    message = str(info.value)
    assert message.count(str(path)) == 1 and "0x" not in message and "\n" not in message, message
    assert "junk.png" in message and "not" in message


def test_a_run_that_reads_no_frame_exits_non_zero(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "junk"
    folder.mkdir()
    for name in ("a.png", "b.ppm"):
        (folder / name).write_bytes(b"garbage, not an image")
    r = run_cli("run", str(folder), "--headless", "--json", "--model", str(model_dirs["plain"]))
    assert r.returncode == 1, r.stderr
    summary = json.loads(r.stdout)
    assert summary["frames"] == 0 and summary["bad_frames"] == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "no frame" in last, r.stderr
    assert "0x" not in r.stderr and r.stderr.count(str(folder / "a.png")) == 1, r.stderr
    assert "Traceback" not in r.stderr


# -- the decoder never fails with anything but ImageDecodeError -----------------------------------------

def seed_images() -> list[bytes]:
    Image = pytest.importorskip("PIL.Image")
    img = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    out = [encode_ppm(img), b"P5 8 6 255\n" + img[..., 0].tobytes()]
    for fmt in ("PNG", "BMP", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, fmt)
        out.append(buf.getvalue())
    return out


SEEDS = seed_images()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.integers(0, len(SEEDS) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "set", "word", "insert", "truncate", "delete")))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "word" and len(data) >= 4:  # a forged size, offset or count field
            pos = min(pos, len(data) - 4)
            value = draw(st.sampled_from((0, 1, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF))
                         | st.integers(0, 2**32 - 1))
            data[pos:pos + 4] = value.to_bytes(4, draw(st.sampled_from(("little", "big"))))
        elif op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "truncate":
            del data[pos:]
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
    return bytes(data)


def check_decoder(data: bytes, decode: object) -> None:
    try:
        out = decode(data, "fuzz.img")  # type: ignore[operator]
    except ImageDecodeError as exc:
        assert str(exc).startswith("fuzz.img: ") and "\n" not in str(exc)
        return
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert min(out.shape[:2]) >= 1


@settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), mutated()))
def test_fuzz_decode_image(data: bytes) -> None:
    check_decoder(data, decode_image)


@st.composite
def pnm_headers(draw: st.DrawFn) -> bytes:
    """PNM headers with odd numbers: huge, zero, overflowing, hundreds of digits long."""
    number = st.one_of(st.integers(0, 70000).map(lambda v: str(v).encode()),
                       st.integers(1, 6000).map(lambda n: b"9" * n))
    sep = draw(st.sampled_from((b" ", b"\n", b"\n# comment\n", b"\t")))
    magic = draw(st.sampled_from((b"P5", b"P6")))
    return magic + sep + sep.join(draw(number) for _ in range(3)) + b"\n" + draw(st.binary(max_size=64))


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=100).map(lambda b: b"P6" + b), mutated(), pnm_headers()))
def test_fuzz_decode_pnm(data: bytes) -> None:
    check_decoder(data, decode_pnm)
