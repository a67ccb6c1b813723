"""Issue 44, the camera loop: outputs that cannot be written, SIGTERM, reconnecting streams, bad run options."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import blocked_imports

from edgepure.cli.main import app
from edgepure.runtime.budget import BudgetController
from edgepure.runtime.errors import ConfigError
from edgepure.runtime.stream import Runner, open_source, run_stream
from edgepure.runtime.stream.capture import Capture
from edgepure.runtime.stream.outputs import OutputError, VideoOutput, open_output
from edgepure.runtime.stream.sources import Frame, Source, SourceError, SynthSource

cli = CliRunner()


def invoke(model: Path, *args: str) -> Any:
    """``edgepure ARGS --model MODEL --threads 1`` in this process."""
    return cli.invoke(app, [*args, "--model", str(model), "--threads", "1"])


def run_cli(*args: str, prelude: str = "") -> subprocess.Popen:
    """``edgepure ARGS`` in a fresh interpreter with torch blocked, after ``prelude`` (started, not waited for)."""
    script = blocked_imports("torch") + textwrap.dedent(prelude) + textwrap.dedent(f"""
        sys.argv = ["edgepure", *{list(args)!r}]
        from edgepure.cli.main import main
        main()
    """)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def no_summary(output: str) -> bool:
    return "frames in" not in output and '"frames"' not in output


# -- item 7: outputs ----------------------------------------------------------------------------------

def _bad_output(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """The run arguments for one kind of unwritable output, and what the error must say."""
    (tmp_path / "a-file").write_text("x")
    if case == "jsonl is a folder":
        (tmp_path / "out.jsonl").mkdir()
        return [str(tmp_path / "out.jsonl")], "is a folder"
    if case == "jsonl folder is a file":
        return [str(tmp_path / "a-file" / "out.jsonl")], "is not a folder"
    if case == "video is a folder":
        (tmp_path / "clip.mp4").mkdir()
        return [str(tmp_path / "clip.mp4")], "is a folder"
    if case == "video folder is a file":
        return [str(tmp_path / "a-file" / "clip.mp4")], "is not a folder"
    if case == "results is a folder":
        (tmp_path / "res").mkdir()
        return ["--headless", "--results", str(tmp_path / "res")], "--results"
    assert case == "results without suffix"
    return ["--headless", "--results", str(tmp_path / "res")], ".jsonl"


@pytest.mark.parametrize("case", ["jsonl is a folder", "jsonl folder is a file", "video is a folder",
                                  "video folder is a file", "results is a folder", "results without suffix"])
def test_unwritable_outputs_are_refused_before_the_loop(model_dirs: dict[str, Path], tmp_path: Path,
                                                        case: str) -> None:
    args, message = _bad_output(tmp_path, case)
    r = invoke(model_dirs["plain"], "run", "synth://?n=3", *args)
    assert r.exit_code == 1, r.output
    assert "error:" in r.output and message in r.output and no_summary(r.output), r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert not (tmp_path / "res.jsonl").exists()  # --results DIR no longer writes DIR.jsonl beside it


def test_a_read_only_folder_is_refused_before_the_loop(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root writes through any mode bits; sysfs refuses new files even to root, so /sys stands in for a
        # read-only folder (this proves the start-up probe reports a refused create, not the mode-bit check)
        folder = Path("/sys")
        with pytest.raises(OSError):
            open(folder / "edgepure-probe.jsonl", "w").close()
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    for name in ("out.jsonl", "out.mp4"):
        r = invoke(model_dirs["plain"], "run", "synth://?n=3", str(folder / name))
        assert r.exit_code == 1, r.output
        assert f"error: {folder / name}" in r.output and no_summary(r.output), r.output
        assert re.search("Permission denied|Read-only file system", r.output), r.output


def test_a_full_disk_under_a_jsonl_output_stops_the_run_with_an_error(model_dirs: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    r = invoke(model_dirs["plain"], "run", "synth://?n=50", str(out), "--json")
    assert r.exit_code == 1, r.output
    summary = json.loads(r.stdout)
    assert summary["stop"] == "output failed" and summary["frames"] >= 1
    assert f"error: {out}" in r.output and "No space left on device" in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception


FILE_SIZE_LIMIT = """
    import resource, signal
    # writes past 200 kB fail with EFBIG (SIGXFSZ ignored), as they would on a disk that fills up
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
"""


def test_a_video_that_can_no_longer_be_written_stops_the_run_with_an_error(model_dirs: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    out = tmp_path / "out.mp4"
    proc = run_cli("run", "synth://?n=3000&size=64", str(out), "--headless", "--json", "--model",
                   str(model_dirs["plain"]), "--threads", "1", prelude=FILE_SIZE_LIMIT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    summary = json.loads(stdout)
    assert summary["stop"] == "output failed" and 1 <= summary["frames"] < 3000
    assert f"error: {out}" in stderr and "Traceback" not in stderr, stderr


def test_without_a_write_status_a_full_disk_is_still_noticed(model_dirs: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCV 4's ``VideoWriter.write`` returns None (no status): the output then watches the free space.
    This drives that logic with a writer that reports nothing and a file system that says it is full."""
    pytest.importorskip("cv2")
    out = VideoOutput(tmp_path / "v.avi")
    src = SynthSource("synth://?n=200")
    src.open()
    record = {"prediction": {"name": "x", "confidence": 0.5}, "latency_ms": {"total": 1.0}}
    out.write(src.read(), record)  # type: ignore[arg-type]

    class Silent:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def write(self, img: np.ndarray) -> None:
            self.inner.write(img)

        def release(self) -> None:
            self.inner.release()

    out.writer = Silent(out.writer)
    real = os.statvfs(tmp_path)
    full = os.statvfs_result((real.f_bsize, real.f_frsize, real.f_blocks, 0, 0, real.f_files, real.f_ffree,
                              real.f_favail, real.f_flag, real.f_namemax))
    monkeypatch.setattr(os, "statvfs", lambda p: full)
    with pytest.raises(OutputError, match="No space left on device"):
        for _ in range(100):
            out.write(src.read(), record)  # type: ignore[arg-type]
    out.close()


# -- item 10: SIGTERM ----------------------------------------------------------------------------------

def test_sigterm_finishes_the_video_and_prints_the_summary(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    out = tmp_path / "out.mp4"
    proc = run_cli("run", "synth://?n=100000", str(out), "--headless", "--json", "--model",
                   str(model_dirs["plain"]), "--threads", "1")
    deadline = time.monotonic() + 120
    while not (out.exists() and out.stat().st_size > 20_000):  # frames are being written
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["stop"] == "terminated" and summary["frames"] > 0
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened()
    ok, frame = cap.read()
    assert ok and frame is not None
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) > 0


def test_sigterm_stops_run_stream_and_the_previous_handler_comes_back(model_dirs: dict[str, Path]) -> None:
    runner = Runner.from_directory(model_dirs["plain"], threads=1)
    seen: list[int] = []

    def previous(signum: int, frame: Any) -> None:
        seen.append(signum)  # a handler of the caller's: must not be the one that runs during the loop

    def terminate_after_five(record: dict) -> None:
        if record["frame"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, previous)
    try:
        s = run_stream(open_source("synth://?n=100"), runner, on_record=terminate_after_five)
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, old)
    assert s["stop"] == "terminated" and s["frames"] == 5 and not seen


# -- item 13: reconnecting ------------------------------------------------------------------------------

class Unplugged(Source):
    """A live source whose first ``failures`` opens fail (a camera not there yet), then ``n`` frames."""

    live = True

    def __init__(self, n: int, failures: int) -> None:
        super().__init__("cam://unplugged")
        self.inner = SynthSource(f"synth://?n={n}")
        self.failures, self.opens = failures, 0

    def open(self) -> None:
        self.opens += 1
        if self.opens <= self.failures:
            raise SourceError("camera not there")
        self.inner.open()

    def read(self) -> Optional[Frame]:
        return self.inner.read()


def delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [float(m) for m in re.findall(r"attempt \d+ in (\d+\.\d+) s", caplog.text)]


def test_a_live_source_that_is_not_there_yet_is_retried(model_dirs: dict[str, Path],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    runner = Runner.from_directory(model_dirs["plain"], threads=1)
    src = Unplugged(8, failures=3)
    with caplog.at_level(logging.WARNING, "edgepure.runtime.capture"):
        s = run_stream(Capture(src, reconnect_timeout=30, backoff=0.01), runner)
    assert s["frames"] + s["dropped"] == 8 and s["failure"] is None and src.opens == 4
    assert caplog.text.count("camera not there") >= 3


def test_a_missing_file_source_is_still_an_immediate_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such video file"):
        Capture(open_source(str(tmp_path / "missing.mp4")), reconnect_timeout=30).start()


def test_the_backoff_doubles_up_to_its_cap_and_gives_up_at_the_timeout(model_dirs: dict[str, Path],
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    runner = Runner.from_directory(model_dirs["plain"], threads=1)
    with caplog.at_level(logging.WARNING, "edgepure.runtime.capture"):
        s = run_stream(Capture(Unplugged(8, failures=10**6), reconnect_timeout=1.0, backoff=0.01,
                               max_backoff=0.08), runner)
    assert s["stop"] == "source failed" and s["frames"] == 0 and "gave up after" in s["failure"]
    d = delays(caplog)
    assert len(d) >= 5 and d[:4] == [0.01, 0.02, 0.04, 0.08], d
    assert max(d) <= 0.08 and all(x > 0 for x in d[4:-1]), d


def test_a_zero_reconnect_timeout_never_gives_up(model_dirs: dict[str, Path]) -> None:
    runner = Runner.from_directory(model_dirs["plain"], threads=1)
    src = Unplugged(5, failures=60)  # far more failures than a count of retries would allow
    s = run_stream(Capture(src, reconnect_timeout=0, backoff=0.0005, max_backoff=0.001), runner)
    assert s["failure"] is None and s["frames"] + s["dropped"] == 5 and src.opens == 61


class MjpegServer:
    """An MJPEG-over-HTTP camera on 127.0.0.1: refuses connections until :meth:`listen`, then serves
    ``bursts[i]`` frames on its i-th connection and drops it; after the last burst the port closes."""

    def __init__(self, bursts: list[int]) -> None:
        self.bursts = bursts
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.listening = threading.Event()

    def listen(self) -> None:
        if not self.listening.is_set():
            self.listening.set()
            self.sock.listen()
            self.sock.settimeout(30)  # bounds the test if the client never comes
            self.thread.start()

    def _serve(self) -> None:
        import cv2

        try:
            for n in self.bursts:
                conn, _ = self.sock.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=f\r\n\r\n")
                    for i in range(n):
                        jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 25 * i, np.uint8))[1].tobytes()
                        conn.sendall(b"--f\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                                     + jpeg + b"\r\n")
                        time.sleep(0.02)
        finally:
            self.sock.close()


class ListenOnFirstRetry(logging.Handler):
    def __init__(self, server: MjpegServer) -> None:
        super().__init__(logging.WARNING)
        self.server = server

    def emit(self, record: logging.LogRecord) -> None:
        self.server.listen()


def test_an_http_camera_is_retried_read_reconnected_and_given_up_on(model_dirs: dict[str, Path], tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("cv2")
    server = MjpegServer([5, 4])
    handler = ListenOnFirstRetry(server)
    log = logging.getLogger("edgepure.runtime.capture")
    log.addHandler(handler)
    out = tmp_path / "r.jsonl"
    try:
        with caplog.at_level(logging.INFO, "edgepure.runtime.capture"):
            r = invoke(model_dirs["plain"], "run", f"http://127.0.0.1:{server.port}/stream.mjpg", str(out),
                       "--reconnect-timeout", "1", "--json")
    finally:
        log.removeHandler(handler)
    assert r.exit_code == 1, r.output
    s = json.loads(r.stdout)
    assert s["stop"] == "source failed" and "gave up after" in s["failure"]
    assert s["captured"] == 9 and s["frames"] + s["dropped"] == 9 and s["reopens"] == 1
    assert len([line for line in out.read_text().splitlines() if line]) == s["frames"]
    assert "Connection refused" in caplog.text or "cannot open" in caplog.text
    assert "stopped delivering frames" in caplog.text and caplog.text.count("attempt") >= 3


def test_a_stream_server_that_accepts_and_says_nothing_fails_the_open_instead_of_hanging(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("cv2")
    from edgepure.runtime.stream.sources import OpenCVSource, SourceError

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(20)
    held: list[Any] = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    monkeypatch.setattr(OpenCVSource, "stream_timeout_s", 0.5)
    src = open_source(f"http://127.0.0.1:{server.getsockname()[1]}/stream.mjpg")
    t0 = time.monotonic()
    try:
        with pytest.raises(SourceError, match="cannot open"):
            src.open()
        assert time.monotonic() - t0 < 10, "FFmpeg's own wait (about 30 s) was not cut short"
        assert held, "the server never saw the connection: the test proves nothing"
    finally:
        src.close()
        server.close()


# -- items 9 and 14: options -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "--threads"),
    (["--threads", "1000"], "cores"),
    (["--budget-ms", "nan"], "--budget-ms"),
    (["--budget-ms", "inf"], "--budget-ms"),
    (["--budget-ms", "0"], "--budget-ms"),
    (["--budget-ms", "-5"], "--budget-ms"),
    (["--seed", "-1"], "--seed"),
    (["--reconnect-timeout", "-1"], "--reconnect-timeout"),
    (["--reconnect-timeout", "nan"], "--reconnect-timeout"),
    (["--fps", "nan"], "--fps"),
    (["--fps", "0"], "--fps"),
])
def test_bad_run_options_are_clear_errors(model_dirs: dict[str, Path], args: list[str], message: str) -> None:
    r = cli.invoke(app, ["run", "synth://?n=3", "--headless", "--model", str(model_dirs["plain"]), *args])
    assert r.exit_code == 1 and "error:" in r.output and message in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception


@pytest.mark.parametrize("threads", ["0", "1000"])
def test_bench_threads_are_bounded_by_the_cores(model_dirs: dict[str, Path], threads: str) -> None:
    r = cli.invoke(app, ["bench", "--model", str(model_dirs["plain"]), "--threads", threads, "--iters", "1"])
    assert r.exit_code == 1 and "--threads" in r.output and str(os.cpu_count()) in r.output, r.output


def test_the_budget_controller_refuses_a_budget_that_is_not_a_finite_positive_number() -> None:
    for bad in (math.nan, math.inf, 0.0):
        with pytest.raises(ConfigError, match="latency budget"):
            BudgetController(["a"], [1.0], bad)

