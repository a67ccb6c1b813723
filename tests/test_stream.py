"""The camera loop: ``edgepure run`` over folders, videos and the synthetic source, torch-free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from conftest import blocked_imports

from edgepure.runtime.imageio import encode_ppm
from edgepure.runtime.synth import render_sign
from edgepure.runtime.stream import Runner, open_output, open_source, run_stream
from edgepure.runtime.stream.capture import Capture
from edgepure.runtime.stream.sources import (FolderSource, Frame, OpenCVSource, Source, SourceError, SynthSource,
                                             csi_pipeline)
from edgepure.runtime.errors import ConfigError, EdgepureError

BLOCK = blocked_imports("torch")


def run_cli(*args: str, block_torch: bool = True, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    """``edgepure ARGS`` in a fresh interpreter, with torch blocked (as on a device without it)."""
    script = (BLOCK if block_torch else "import sys\n") + textwrap.dedent(f"""
        sys.argv = ["edgepure", *{list(args)!r}]
        from edgepure.cli.main import main
        try:
            main()
        finally:
            assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules) or not {block_torch}
    """)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=full_env)


def signs(n: int, seed: int, size: int = 48) -> tuple[list[np.ndarray], list[int]]:
    labels = [int(c) for c in np.random.default_rng(seed).integers(0, 43, n)]
    return [render_sign(c, np.random.default_rng([seed, i]), size=size) for i, c in enumerate(labels)], labels


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_over_an_image_folder_without_torch(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    images, labels = signs(30, seed=5)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, img in enumerate(images):
        (folder / f"{i:03d}.ppm").write_bytes(encode_ppm(img))
    outs = []
    for k in range(2):
        out = tmp_path / f"r{k}.jsonl"
        r = run_cli("run", f"file://{folder}/", str(out), "--model", str(model_dirs["median"]), "--json", "--threads", "1")
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["frames"] == 30 and summary["errors"] == 0 and summary["stop"] == "end of stream"
        outs.append([(x["source"], x["prediction"]["label"]) for x in records(out)])
    assert outs[0] == outs[1], "not deterministic"
    assert [s for s, _ in outs[0]] == [f"{i:03d}.ppm" for i in range(30)]
    acc = np.mean([p == y for (_, p), y in zip(outs[0], labels)])
    assert acc >= 0.85, acc


def test_run_over_a_video_file_without_torch(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    images, labels = signs(12, seed=9, size=64)
    video = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    hold = 3
    for img in images:
        for _ in range(hold):
            w.write(np.ascontiguousarray(img[..., ::-1]))
    w.release()
    expected = [y for y in labels for _ in range(hold)]
    preds = []
    for k in range(2):
        out = tmp_path / f"v{k}.jsonl"
        r = run_cli("run", str(video), str(out), "--model", str(model_dirs["plain"]), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["frames"] == len(expected)
        preds.append([x["prediction"]["label"] for x in records(out)])
    assert preds[0] == preds[1]
    assert np.mean(np.array(preds[0]) == np.array(expected)) >= 0.8


def test_synth_source_accuracy_and_overlay_video(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    video = tmp_path / "overlay.mp4"
    r = run_cli("run", "synth://?n=40&hold=2&seed=3", str(video), "--model", str(model_dirs["median"]),
                "--results", str(tmp_path / "r.jsonl"), "--smoothing", "0.5", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["frames"] == s["labelled"] == 40 and s["accuracy"] >= 0.85
    for stage in ("preprocess", "pipeline", "total"):
        h = s["latency_ms"][stage]
        assert h["n"] == 40 and 0 < h["p50_ms"] <= h["p95_ms"] <= h["p99_ms"] <= h["max_ms"] * 1.01
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 40
    ok, frame = cap.read()
    assert ok and min(frame.shape[:2]) >= 256  # upscaled for the overlay
    assert frame[:20].mean() < frame[60:].mean()  # the dark text band


def test_split_mode_agrees_with_fused(model_dirs: dict[str, Path]) -> None:
    a = Runner.from_directory(model_dirs["median"], mode="fused", threads=1)
    b = Runner.from_directory(model_dirs["median"], mode="split", threads=1)
    src_a, src_b = SynthSource("synth://?n=10&seed=4"), SynthSource("synth://?n=10&seed=4")
    src_a.open()
    src_b.open()
    for _ in range(10):
        ra, rb = a.step(src_a.read()), b.step(src_b.read())  # type: ignore[arg-type]
        assert ra["prediction"]["label"] == rb["prediction"]["label"]
        assert abs(ra["prediction"]["confidence"] - rb["prediction"]["confidence"]) < 1e-4
        assert set(rb["latency_ms"]) >= {"purifier", "classifier", "total"} and "pipeline" in ra["latency_ms"]


class Flaky(Source):
    """Fails once after ``fail_at`` frames (the stream drops), then works again after a reopen."""

    def __init__(self, n: int, fail_at: int, reopen_failures: int = 0) -> None:
        super().__init__("flaky://")
        self.n, self.fail_at, self.reopen_failures = n, fail_at, reopen_failures
        self.opens = 0
        self.failed = False
        self.inner = SynthSource(f"synth://?n={n}&seed=1")

    def open(self) -> None:
        self.opens += 1
        if self.failed and self.reopen_failures > 0:
            self.reopen_failures -= 1
            raise SourceError("camera not there")
        self.inner.open()

    def read(self) -> Optional[Frame]:
        if self.inner.index == self.fail_at and not self.failed:
            self.failed = True
            raise SourceError("stream stopped")
        return self.inner.read()


def test_a_failing_source_is_reopened(model_dirs: dict[str, Path]) -> None:
    runner = Runner.from_directory(model_dirs["plain"], threads=1)
    src = Flaky(20, fail_at=7, reopen_failures=2)
    s = run_stream(Capture(src, backoff=0.01), runner)
    assert s["frames"] == 20 and s["reopens"] == 1 and s["failure"] is None and src.opens == 4


def test_a_source_that_stays_down_ends_the_run_with_the_reason(model_dirs: dict[str, Path]) -> None:
    runner = Runner.from_directory(model_dirs["plain"], threads=1)
    s = run_stream(Capture(Flaky(20, fail_at=5, reopen_failures=99), retries=3, backoff=0.01), runner)
    assert s["frames"] == 5 and s["stop"] == "source failed" and "gave up after 3" in s["failure"]


def test_a_slow_model_drops_live_frames_instead_of_falling_behind(model_dirs: dict[str, Path]) -> None:
    runner = Runner.from_directory(model_dirs["plain"], threads=1)
    step = runner.step

    def slow(frame: Frame) -> dict:
        import time

        time.sleep(0.02)  # the model takes 20 ms; the camera delivers a frame every 2 ms
        return step(frame)

    runner.step = slow  # type: ignore[method-assign]
    s = run_stream(open_source("synth://?n=200&fps=500&hold=200"), runner)
    assert s["captured"] == 200 and s["dropped"] > 100 and s["frames"] + s["dropped"] == 200
    # the frames processed are the newest ones: the loop never lags by more than the queue
    assert s["frames"] < 40


def test_bad_frames_are_counted_and_skipped(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    images, _ = signs(4, seed=2)
    for i, img in enumerate(images):
        (folder / f"{i}.ppm").write_bytes(encode_ppm(img))
    (folder / "1b.ppm").write_bytes(encode_ppm(images[0])[:40])  # truncated
    (folder / "2b.ppm").write_bytes(b"not an image at all")
    out = tmp_path / "r.jsonl"
    r = run_cli("run", str(folder), str(out), "--model", str(model_dirs["plain"]), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["frames"] == 4 and s["bad_frames"] == 2
    assert "1b.ppm" in r.stderr and "2b.ppm" in r.stderr  # each named in the log
    assert len(records(out)) == 4


def test_ten_thousand_frames_leave_memory_flat(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    script = BLOCK + textwrap.dedent(f"""
        import resource, json
        from edgepure.runtime.stream import Runner, open_output, open_source, run_stream

        def rss_mb():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        marks = {{}}
        def mark(record):
            if record["frame"] in (1999, 9999):
                marks[record["frame"]] = rss_mb()
        runner = Runner.from_directory({str(model_dirs["plain"])!r}, threads=1, smoothing=0.5)
        out = open_output({str(tmp_path / "r.jsonl")!r})
        s = run_stream(open_source("synth://?n=10000&hold=100"), runner, [out], on_record=mark)
        print(json.dumps({{"frames": s["frames"], "marks": marks}}))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["frames"] == 10000
    growth = res["marks"]["9999"] - res["marks"]["1999"]
    assert growth < 8.0, f"RSS grew {growth:.1f} MB over 8,000 frames"


@pytest.mark.parametrize("args, message", [
    (["run", "/nonexistent/frames/", "--headless"], "no such file or folder"),
    (["run", "gopher://x", "--headless"], "unknown input scheme"),
    (["run", "synth://?classes=7,99", "--headless"], "classes must be ids in 0..42"),
    (["run", "synth://?n=3&colour=red", "--headless"], "unknown synth:// parameters: colour"),
    (["run", "synth://?n=3", "out.txt"], "unknown output type .txt"),
    (["run", "synth://?n=3", "--headless", "--roi", "1,2,3"], "--roi expects x,y,w,h"),
    (["run", "synth://?n=3", "--headless", "--smoothing", "0"], "smoothing α must be in (0, 1]"),
    (["run", "synth://?n=3", "--headless", "--variant", "k99"], "no variant 'k99'"),
    (["run", "synth://?n=3", "display://0", "--headless"], "contradict"),
    (["run", "synth://?n=3", "display://0"], "needs a display"),
    (["run", "csi://0", "--headless"], "GStreamer"),
    (["run", "synth://?n=3", "--headless", "--backend", "ort-cuda"], "CUDAExecutionProvider"),
    (["run", "synth://?n=3", "--headless", "--backend", "tensorrt"], "cuda-python"),
])
def test_bad_input_gives_a_clear_error(model_dirs: dict[str, Path], args: list[str], message: str) -> None:
    r = run_cli(*args, "--model", str(model_dirs["plain"]), env={"DISPLAY": ""})
    assert r.returncode == 1, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_missing_and_tampered_models_are_refused(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    r = run_cli("run", "synth://?n=2", "--headless", "--model", str(tmp_path / "nope"))
    assert r.returncode == 1 and "no such model directory" in r.stderr
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(model_dirs["plain"], bad)
    with open(bad / "classifier.onnx", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    r = run_cli("run", "synth://?n=2", "--headless", "--model", str(bad))
    assert r.returncode == 1 and "sha256 mismatch" in r.stderr and "Traceback" not in r.stderr


def test_uris_map_to_sources() -> None:
    assert isinstance(open_source("synth://?n=5"), SynthSource)
    v = open_source("/dev/video2")
    assert isinstance(v, OpenCVSource) and v.kind == "v4l2" and v.target == "/dev/video2" and v.live
    c = open_source("csi://1?width=1920&height=1080&fps=60")
    assert isinstance(c, OpenCVSource) and c.kind == "csi" and (c.width, c.height, c.fps) == (1920, 1080, 60)
    assert open_source("rtsp://cam.local:8554/live").kind == "stream"  # type: ignore[attr-defined]
    assert open_source("file://clip.mp4").kind == "video"  # type: ignore[attr-defined]
    assert isinstance(open_source("file://somewhere/"), FolderSource)
    p = csi_pipeline(1, 1920, 1080, 60)
    assert p.startswith("nvarguscamerasrc sensor-id=1 ") and "width=1920,height=1080,framerate=60/1" in p
    assert "appsink drop=1 max-buffers=1" in p
    with pytest.raises(ConfigError, match="unknown parameters"):
        open_source("csi://0?exposure=3")
    with pytest.raises(ConfigError, match="attacks apply to synth"):
        open_source("/dev/video0", transform=lambda x, y: x)
    with pytest.raises(ConfigError, match="no input"):
        open_source("")
    with pytest.raises(ConfigError, match="unknown output"):
        open_output("rtp://host:1234")


def test_synth_source_is_deterministic_and_paced() -> None:
    import time

    a, b = SynthSource("synth://?n=6&seed=2&hold=2&corrupt=occlusion"), SynthSource("synth://?n=6&seed=2&hold=2&corrupt=occlusion")
    a.open()
    b.open()
    fa = [a.read() for _ in range(7)]
    fb = [b.read() for _ in range(7)]
    assert fa[-1] is None and fb[-1] is None
    assert all(np.array_equal(x.image, y.image) and x.label == y.label for x, y in zip(fa[:-1], fb[:-1]))  # type: ignore[union-attr]
    assert [f.scene for f in fa[:-1]] == [0, 0, 1, 1, 2, 2]  # type: ignore[union-attr]
    live = SynthSource("synth://?n=10&fps=100")
    live.open()
    t0 = time.monotonic()
    while live.read() is not None:
        pass
    assert live.live and time.monotonic() - t0 >= 0.09


def test_synth_attack_needs_the_classifier_and_hurts_it(model_dirs: dict[str, Path]) -> None:
    r = run_cli("run", "synth://?n=8&attack=additive", "--headless", "--model", str(model_dirs["plain"]))
    assert r.returncode == 1 and "needs the Python package 'torch'" in r.stderr
    clean = run_cli("run", "synth://?n=24&seed=6", "--headless", "--json", "--model", str(model_dirs["plain"]),
                    block_torch=False)
    attacked = run_cli("run", "synth://?n=24&seed=6&attack=additive&attack_steps=5", "--headless", "--json",
                       "--model", str(model_dirs["plain"]), block_torch=False)
    assert clean.returncode == 0 and attacked.returncode == 0, attacked.stderr
    a, b = json.loads(clean.stdout)["accuracy"], json.loads(attacked.stdout)["accuracy"]
    assert a >= 0.85 and b <= a - 0.5, (a, b)


def test_interrupt_still_writes_the_summary(model_dirs: dict[str, Path]) -> None:
    runner = Runner.from_directory(model_dirs["plain"], threads=1)
    seen = []

    def stop_after_five(record: dict) -> None:
        seen.append(record)
        if len(seen) == 5:
            raise KeyboardInterrupt

    s = run_stream(open_source("synth://?n=100"), runner, on_record=stop_after_five)
    assert s["stop"] == "interrupted" and s["frames"] == 5 and s["latency_ms"]["total"]["n"] == 5


def test_consecutive_frame_errors_end_the_run(model_dirs: dict[str, Path]) -> None:
    runner = Runner.from_directory(model_dirs["plain"], threads=1)

    def broken(frame: Frame) -> dict:
        raise ConfigError("bad ROI")

    runner.step = broken  # type: ignore[method-assign]
    with pytest.raises(EdgepureError, match="5 frames in a row failed"):
        run_stream(open_source("synth://?n=20"), runner, max_consecutive_errors=5)


def test_roi_crops_the_sign_out_of_a_larger_frame(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    images, labels = signs(12, seed=11, size=32)
    folder = tmp_path / "big"
    folder.mkdir()
    for i, img in enumerate(images):
        frame = np.full((120, 160, 3), 100, np.uint8)
        frame[50:82, 70:102] = img  # x 70..101, y 50..81
        (folder / f"{i:02d}.ppm").write_bytes(encode_ppm(frame))
    accs = {}
    for roi in (None, "70,50,32,32"):
        out = tmp_path / f"{roi is None}.jsonl"
        args = ["run", str(folder), str(out), "--model", str(model_dirs["plain"]), "--max-frames", "10"]
        r = run_cli(*args, *(["--roi", roi] if roi else []))
        assert r.returncode == 0, r.stderr
        preds = [x["prediction"]["label"] for x in records(out)]
        assert len(preds) == 10  # --max-frames
        accs[roi] = np.mean(np.array(preds) == np.array(labels[:10]))
    assert accs["70,50,32,32"] >= 0.9 and accs[None] <= 0.5, accs
