"""Outputs of the camera loop: ``display://0``, a video file, a JSON-lines file of results, or nothing.

Video and display show the frame with an overlay (label, confidence, latency, FPS, the variant in use);
the JSON-lines file has one object per processed frame and is flushed as it goes, so a run that is
stopped keeps every line written so far. File outputs are checked when they are opened (the folder exists
and takes a new file), and a write that fails later (a full disk, a removed card) raises
:class:`OutputError`, which ends the loop.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import numpy as np

from edgepure.runtime.errors import ConfigError, EdgepureError
from edgepure.runtime.stream.sources import VIDEO_EXTENSIONS, Frame, import_cv2

__all__ = ["DisplayOutput", "JsonlOutput", "Output", "OutputError", "StopRequested", "VideoOutput", "open_output",
           "overlay"]


class StopRequested(Exception):
    """The user closed the window or pressed q / Esc."""


class OutputError(EdgepureError):
    """An output cannot be written any more (disk full, device gone): the loop stops and reports it."""


def _check_path(path: Path) -> None:
    """Refuse a file output whose place is a folder, or whose folder is missing or is a file."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder (expected a file to write)")
    if not path.parent.exists():
        raise ConfigError(f"{path}: its folder {path.parent} does not exist")
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: {path.parent} is not a folder")


def _cannot_write(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(f"{path}: cannot write here ({exc.strerror or exc})")


class Output:
    def write(self, frame: Frame, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def overlay(image: np.ndarray, lines: list[str], min_side: int = 256) -> np.ndarray:
    """The RGB frame as BGR, upscaled so its short side is ≥ ``min_side``, with ``lines`` drawn on a dark band."""
    cv2 = import_cv2()
    h, w = image.shape[:2]
    scale = max(1, math.ceil(min_side / max(1, min(h, w))))
    bgr = np.ascontiguousarray(image[..., ::-1])
    if scale > 1:
        bgr = cv2.resize(bgr, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    font, size, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.45 * max(1.0, bgr.shape[1] / 400), 1
    line_h = int(22 * size / 0.45)
    band = bgr[: line_h * len(lines) + 6]
    band[:] = (band * 0.35).astype(np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(bgr, text, (6, line_h * (i + 1)), font, size, (255, 255, 255), thick, cv2.LINE_AA)
    return bgr


def _lines(record: dict[str, Any]) -> list[str]:
    pred = record.get("prediction") or {}
    lat = record.get("latency_ms", {}).get("total")
    lines = [f"{pred.get('name', '?')[:34]}  {100 * pred.get('confidence', 0):.0f}%"]
    info = f"{lat:.1f} ms" if lat is not None else ""
    if record.get("fps"):
        info += f"  {record['fps']:.1f} FPS"
    if record.get("variant"):
        info += f"  [{record['variant']}]"
    lines.append(info.strip())
    return lines


class JsonlOutput(Output):
    def __init__(self, path: Path) -> None:
        _check_path(path)
        self.path = path
        try:
            self.file = open(path, "w", encoding="utf-8")
        except OSError as exc:
            raise _cannot_write(path, exc) from None
        self.failed = False

    def write(self, frame: Frame, record: dict[str, Any]) -> None:
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as exc:
            self.failed = True
            frame_no = record.get("frame")
            raise OutputError(f"{self.path}: cannot write frame {frame_no} ({exc.strerror or exc})") from None

    def close(self) -> None:
        if self.file.closed:
            return
        error: Optional[OSError] = None
        try:
            self.file.flush()
            if self.path.is_file():  # fsync is for files: a device such as /dev/full refuses it
                os.fsync(self.file.fileno())
        except OSError as exc:
            error = exc
        try:
            self.file.close()  # closes the descriptor even when the flush inside it fails
        except OSError as exc:
            error = error or exc
        if error is not None and not self.failed:  # a failure the loop already reported is not reported twice
            raise OutputError(f"{self.path}: cannot finish the file ({error.strerror or error})")


class VideoOutput(Output):
    """A video file with the overlay. The writer opens on the first frame (its size is not known before),
    so the constructor tries creating the file to find an unwritable place before the loop starts.

    A frame OpenCV fails to write (``VideoWriter.write`` returns False from OpenCV 5) ends the loop with
    :class:`OutputError`. OpenCV 4 returns no status, so there the output checks every
    ``space_check_every`` frames that the file system still has room, as a full disk is what fails
    writes in practice.
    """

    space_check_every = 25

    def __init__(self, path: Path, fps: float = 30.0) -> None:
        _check_path(path)
        existed = path.exists()
        try:  # a real create: permission bits do not stop root, and do not show a read-only mount
            open(path, "ab").close()
        except OSError as exc:
            raise _cannot_write(path, exc) from None
        if not existed:
            path.unlink()
        self.cv2 = import_cv2()
        self.path, self.fps = path, fps
        self.writer: Any = None
        self.size: Optional[tuple[int, int]] = None
        self.written = 0

    def write(self, frame: Frame, record: dict[str, Any]) -> None:
        img = overlay(frame.image, _lines(record))
        if self.writer is None:
            fourcc = self.cv2.VideoWriter_fourcc(*("MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"))
            self.size = (img.shape[1], img.shape[0])
            self.writer = self.cv2.VideoWriter(str(self.path), fourcc, self.fps, self.size)
            if not self.writer.isOpened():
                raise OutputError(f"{self.path}: OpenCV cannot write this video (try .avi or .mp4)")
        if (img.shape[1], img.shape[0]) != self.size:
            img = self.cv2.resize(img, self.size, interpolation=self.cv2.INTER_AREA)
        status = self.writer.write(img)
        self.written += 1
        if status is False:
            raise OutputError(f"{self.path}: OpenCV could not write frame {record.get('frame')} "
                              f"({self._likely_cause()}); the frames before it are in the file")
        if status is None and self.written % self.space_check_every == 0 and self._disk_full():
            raise OutputError(f"{self.path}: No space left on device (frames from about frame "
                              f"{record.get('frame')} on may be lost)")

    def _disk_full(self) -> bool:
        if not hasattr(os, "statvfs"):  # Windows: nothing to ask
            return False
        st = os.statvfs(self.path.parent)
        # root may write into the blocks reserved for it; everyone else only into the available ones
        return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) == 0

    def _likely_cause(self) -> str:
        try:
            return "No space left on device" if self._disk_full() else "a write error"
        except OSError as exc:
            return exc.strerror or str(exc)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


class DisplayOutput(Output):
    def __init__(self, title: str = "edgepure") -> None:
        self.cv2 = import_cv2()
        if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise ConfigError("display://0 needs a display (no DISPLAY set): pass --headless or give an OUTPUT file")
        self.title = title

    def write(self, frame: Frame, record: dict[str, Any]) -> None:
        try:
            self.cv2.imshow(self.title, overlay(frame.image, _lines(record)))
            key = self.cv2.waitKey(1) & 0xFF
        except self.cv2.error as exc:
            raise ConfigError(f"display://0: OpenCV cannot open a window ({exc}); pip's opencv-python-headless "
                              "has no GUI: install opencv-python, or pass --headless") from None
        if key in (ord("q"), 27):
            raise StopRequested()

    def close(self) -> None:
        try:
            self.cv2.destroyWindow(self.title)
        except self.cv2.error:
            pass


def open_output(uri: Optional[str], fps: float = 30.0) -> Optional[Output]:
    """The output for ``uri``: ``display://N``, ``*.jsonl``, a video file (``.mp4``/``.avi``/…), or None."""
    if not uri:
        return None
    parts = urlsplit(uri)
    if parts.scheme == "display":
        return DisplayOutput()
    if parts.scheme not in ("", "file"):
        raise ConfigError(f"{uri}: unknown output (expected display://0, a .jsonl file or a video file)")
    path = Path(os.path.expanduser(parts.netloc + parts.path if parts.scheme == "file" else uri))
    suffix = path.suffix.lower()
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder (expected display://0, a .jsonl file or a video file)")
    if suffix in (".jsonl", ".ndjson"):
        return JsonlOutput(path)
    if suffix in VIDEO_EXTENSIONS:
        return VideoOutput(path, fps)
    raise ConfigError(f"{path}: unknown output type {suffix or '(none)'} (expected .jsonl or a video: "
                      f"{', '.join(VIDEO_EXTENSIONS)})")
