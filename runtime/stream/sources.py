"""Frame sources for the camera loop, opened from jetson-inference-style URIs.

=============================  ==========================================================================
``synth://?n=200&seed=0``      rendered signs with known labels (``size``, ``hold``, ``fps``, ``classes``,
                               ``corrupt=blur|occlusion|distortion|noise``, ``severity``)
``file://dir/`` or ``dir/``    the images in a folder, in name order (PPM natively, others via Pillow)
``file://clip.mp4``            a video file (OpenCV)
``/dev/video0``, ``v4l2://…``  a V4L2 camera (OpenCV; GStreamer on a Jetson when OpenCV has it)
``csi://0``                    a Jetson CSI camera through ``nvarguscamerasrc`` (GStreamer)
``rtsp://host/path``           a network stream (OpenCV's FFmpeg)
=============================  ==========================================================================

A source's :meth:`read` returns the next :class:`Frame`, ``None`` at the end of the stream, raises
:class:`BadFrameError` for a frame to count and skip, and :class:`SourceError` when the stream itself
fails (the capture thread then reopens it with backoff). ``live`` sources pace themselves in real time,
so a slow model drops their frames; file sources hand over every frame.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from edgepure.runtime.errors import ConfigError, EdgepureError, ImageDecodeError, MissingDependencyError

__all__ = [
    "ArraySource", "BadFrameError", "Frame", "FolderSource", "IMAGE_EXTENSIONS", "OpenCVSource", "Source", "SourceError",
    "SynthSource", "VIDEO_EXTENSIONS", "csi_pipeline", "open_source", "v4l2_pipeline",
]

IMAGE_EXTENSIONS = (".ppm", ".pgm", ".pnm", ".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


class SourceError(EdgepureError):
    """A source cannot be opened or its stream failed."""


class BadFrameError(EdgepureError):
    """One frame is unusable (corrupt file, wrong shape); the loop counts it and goes on."""


@dataclass
class Frame:
    image: np.ndarray  # H×W×3 uint8 RGB
    index: int
    timestamp: float
    name: str = ""
    label: Optional[int] = None  # ground truth, where the source knows it
    scene: int = 0  # changes when a new sign or file starts (resets temporal smoothing)


def as_rgb(img: np.ndarray, name: str) -> np.ndarray:
    """Gray, RGB or RGBA uint8 → H×W×3 uint8 RGB; anything else is a :class:`BadFrameError`."""
    if img.dtype != np.uint8:
        raise BadFrameError(f"{name}: expected 8-bit pixels, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or min(img.shape[:2]) < 1:
        raise BadFrameError(f"{name}: expected an H×W×3 image, got shape {list(img.shape)}")
    return np.ascontiguousarray(img[..., :3])


class Source:
    """Base class: ``open()``, ``read() -> Frame | None``, ``close()``; ``live`` and ``uri`` describe it."""

    live = False
    frame_size: Optional[tuple[int, int]] = None  # (width, height) where every frame has it, known once open

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.index = 0

    def open(self) -> None:  # pragma: no cover - trivial
        pass

    def read(self) -> Optional[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def _int(params: dict[str, str], key: str, default: int, lo: int = 0) -> int:
    raw = params.pop(key, None)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"URI parameter {key} must be an integer, got {raw!r}") from None
    if value < lo:
        raise ConfigError(f"URI parameter {key} must be ≥ {lo}, got {value}")
    return value


def _float(params: dict[str, str], key: str, default: float) -> float:
    raw = params.pop(key, None)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"URI parameter {key} must be a number, got {raw!r}") from None


Transform = Callable[[np.ndarray, np.ndarray], np.ndarray]


class SynthSource(Source):
    """Rendered signs (numpy only), ``hold`` frames per sign, optionally corrupted or attacked.

    ``transform(images N×H×W×3 uint8, labels N) -> images`` is applied to each chunk of rendered frames
    (``edgepure run`` plugs the adversarial attacks in here when torch is installed).
    """

    def __init__(self, uri: str = "synth://", transform: Optional[Transform] = None, chunk: int = 32) -> None:
        super().__init__(uri)
        from edgepure.runtime.synth.corrupt import CORRUPTIONS
        from edgepure.runtime.synth.render import NUM_CLASSES

        params = dict(parse_qsl(urlsplit(uri).query, keep_blank_values=True))
        self.n = _int(params, "n", 430)
        self.seed = _int(params, "seed", 0)
        self.size = _int(params, "size", 32, lo=8)
        if self.size > 1024:  # larger than any model input, and rendering time grows with the area
            raise ConfigError(f"URI parameter size must be ≤ 1024 pixels, got {self.size}")
        self.hold = _int(params, "hold", 1, lo=1)
        self.fps = _float(params, "fps", 0.0)
        self.severity = _float(params, "severity", 0.5)
        self.corruption = params.pop("corrupt", "none")
        if self.corruption not in CORRUPTIONS:
            raise ConfigError(f"synth:// corrupt must be one of {', '.join(CORRUPTIONS)}, got {self.corruption!r}")
        classes = params.pop("classes", None)
        try:
            self.classes = [int(c) for c in classes.split(",")] if classes else list(range(NUM_CLASSES))
        except ValueError:
            raise ConfigError(f"synth:// classes must be comma-separated class ids, got {classes!r}") from None
        if not self.classes or min(self.classes) < 0 or max(self.classes) >= NUM_CLASSES:
            raise ConfigError(f"synth:// classes must be ids in 0..{NUM_CLASSES - 1}, got {classes!r}")
        self.attack = params.pop("attack", None)  # applied by the caller through ``transform``
        self.attack_steps = params.pop("attack_steps", None)
        if (self.attack or self.attack_steps) and transform is None:
            raise ConfigError(f"{uri}: attack= needs the attack itself: run it through 'edgepure run' with torch "
                              "installed, or pass transform=")
        self.extra = params  # for the caller that handles more parameters
        self.live = self.fps > 0
        self.frame_size = (self.size, self.size)
        self.transform = transform
        self.chunk = chunk
        self._buffer: list[Frame] = []
        self._signs = 0
        self._next_t = 0.0

    def open(self) -> None:
        self._next_t = time.monotonic()
        if self.extra:
            raise ConfigError(f"unknown synth:// parameters: {', '.join(sorted(self.extra))}")

    def _render_chunk(self) -> None:
        from edgepure.runtime.synth.corrupt import corrupt
        from edgepure.runtime.synth.render import render_sign

        first = self._signs
        count = min(self.chunk, -(-self.n // self.hold) - first)
        images, labels = np.empty((0, self.size, self.size, 3), np.uint8), np.empty(0, np.int64)
        if count > 0:
            images = np.empty((count, self.size, self.size, 3), np.uint8)
            labels = np.empty(count, np.int64)
            for i in range(count):
                rng = np.random.default_rng([self.seed, first + i, 3])
                labels[i] = self.classes[int(rng.integers(len(self.classes)))]
                images[i] = render_sign(int(labels[i]), rng, size=self.size)
            if self.corruption != "none":
                images = np.stack([corrupt(im, self.corruption, np.random.default_rng([self.seed, first + i, 5]),
                                           self.severity) for i, im in enumerate(images)])
            if self.transform is not None:
                images = self.transform(images, labels)
        for i in range(count):
            for _ in range(self.hold):
                if self.index + len(self._buffer) >= self.n:
                    break
                self._buffer.append(Frame(images[i], 0, 0.0, f"sign{first + i:05d}", int(labels[i]), first + i))
        self._signs += count

    def read(self) -> Optional[Frame]:
        if self.index >= self.n:
            return None
        if not self._buffer:
            self._render_chunk()
            if not self._buffer:
                return None
        if self.fps > 0:  # a live source: frames come at the camera's pace whether or not anyone reads them
            self._next_t += 1.0 / self.fps
            delay = self._next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        frame = self._buffer.pop(0)
        frame.index, frame.timestamp = self.index, time.time()
        self.index += 1
        return frame


class ArraySource(Source):
    """Frames from memory: ``images`` (N×H×W×3 uint8 RGB), optionally with labels; ``hold`` frames each."""

    def __init__(self, images: np.ndarray, labels: Optional[np.ndarray] = None, hold: int = 1,
                 uri: str = "array://") -> None:
        super().__init__(uri)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ConfigError(f"expected N×H×W×3 uint8 frames, got {images.dtype} {list(images.shape)}")
        if labels is not None and len(labels) != len(images):
            raise ConfigError(f"{len(images)} frames but {len(labels)} labels")
        if hold < 1:
            raise ConfigError(f"hold must be ≥ 1, got {hold}")
        self.images, self.labels, self.hold = images, labels, hold
        self.frame_size = (images.shape[2], images.shape[1])

    def read(self) -> Optional[Frame]:
        i = self.index // self.hold
        if i >= len(self.images):
            return None
        frame = Frame(self.images[i], self.index, time.time(), f"{self.uri}{i}",
                      None if self.labels is None else int(self.labels[i]), i)
        self.index += 1
        return frame


class FolderSource(Source):
    """The images of a folder (or one image file), in name order."""

    def __init__(self, uri: str, path: Path) -> None:
        super().__init__(uri)
        self.path = path
        self.files: list[Path] = []

    def open(self) -> None:
        if self.path.is_file():
            self.files = [self.path]
        elif self.path.is_dir():
            self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not self.files:
                raise SourceError(f"{self.path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        else:
            raise SourceError(f"{self.path}: no such file or folder")

    def read(self) -> Optional[Frame]:
        from edgepure.runtime.imageio import read_image

        if self.index >= len(self.files):
            return None
        path = self.files[self.index]
        i = self.index
        self.index += 1
        try:
            img = as_rgb(read_image(path), str(path))
        except ImageDecodeError as exc:  # its message names the file already
            raise BadFrameError(str(exc)) from None
        return Frame(img, i, time.time(), path.name, None, i)


def csi_pipeline(sensor: int, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    """The GStreamer pipeline of a Jetson CSI camera (NVMM → BGR appsink that keeps only the newest frame)."""
    return (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={width},height={height},"
            f"framerate={fps}/1,format=NV12 ! nvvidconv flip-method={flip} ! video/x-raw,format=BGRx ! "
            "videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1 sync=false")


def v4l2_pipeline(device: str, width: int = 640, height: int = 480, fps: int = 30) -> str:
    """The GStreamer pipeline of a USB (V4L2) camera with raw frames."""
    return (f"v4l2src device={device} ! video/x-raw,width={width},height={height},framerate={fps}/1 ! "
            "videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1 sync=false")


def import_cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError(
            "opencv-python-headless", "video files, cameras, streams and display", extra="camera") from None
    return cv2


def _has_gstreamer(cv2: Any) -> bool:
    return any(line.strip().startswith("GStreamer:") and "YES" in line
               for line in cv2.getBuildInformation().splitlines())


class OpenCVSource(Source):
    """A video file, V4L2 camera, CSI camera or network stream read through ``cv2.VideoCapture``.

    A video frame that fails to decode before the end of the file is a bad frame and reading goes on;
    the end is the frame count the file declares, or ``bad_run_limit`` failed reads in a row.
    """

    bad_run_limit = 25
    stream_timeout_s = 10.0  # a network stream's open or read that waits longer fails (and is retried)

    def __init__(self, uri: str, kind: str, target: str, params: dict[str, str]) -> None:
        super().__init__(uri)
        self.kind, self.target = kind, target
        self.live = kind != "video"
        self.width = _int(params, "width", 1280 if kind == "csi" else 640, lo=1)
        self.height = _int(params, "height", 720 if kind == "csi" else 480, lo=1)
        self.fps = _int(params, "fps", 30, lo=1)
        self.flip = _int(params, "flip", 0)
        if params:
            raise ConfigError(f"{uri}: unknown parameters {', '.join(sorted(params))}")
        self.cap: Any = None
        self._count = 0  # frames a video file declares (0: unknown)
        self._skipped = 0  # bad frames found by looking ahead, still to report
        self._ahead: Any = None  # the frame that decoded after them
        self._ended = False

    def open(self) -> None:
        cv2 = import_cv2()
        if self.kind == "video" and not Path(self.target).is_file():
            raise SourceError(f"{self.target}: no such video file")
        if self.kind == "csi":
            if not _has_gstreamer(cv2):  # a ConfigError: no retry of a live source's first open can fix it
                raise ConfigError(f"{self.uri}: CSI cameras need OpenCV built with GStreamer (JetPack's python3-opencv;"
                                  " pip's opencv-python has none: uninstall it inside the Jetson venv)")
            args: tuple[Any, ...] = (csi_pipeline(int(self.target), self.width, self.height, self.fps, self.flip),
                                     cv2.CAP_GSTREAMER)
        elif self.kind == "v4l2":
            jetson = Path("/etc/nv_tegra_release").exists()
            if jetson and _has_gstreamer(cv2):
                args = (v4l2_pipeline(self.target, self.width, self.height, self.fps), cv2.CAP_GSTREAMER)
            else:
                args = (self.target, cv2.CAP_V4L2)
        elif self.kind == "stream":  # a server that accepts and then says nothing must not hang the capture
            t = int(self.stream_timeout_s * 1000)
            args = (self.target, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, t, cv2.CAP_PROP_READ_TIMEOUT_MSEC, t])
        else:
            args = (self.target,)
        self.cap = cv2.VideoCapture(*args)
        if not self.cap.isOpened():
            self.cap.release()
            self.cap = None
            raise SourceError(f"{self.uri}: cannot open (OpenCV VideoCapture failed)")
        if self.kind == "v4l2" and args[-1] == cv2.CAP_V4L2:
            self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self.kind == "video":
            self._count = max(0, int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT)))
            self._skipped, self._ahead, self._ended = 0, None, False
            w, h = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            self.frame_size = (w, h) if w > 0 and h > 0 else None

    def read(self) -> Optional[Frame]:
        if self.cap is None:
            raise SourceError(f"{self.uri}: not open")
        if self.kind == "video":
            return self._read_video()
        ok, bgr = self.cap.read()
        if not ok or bgr is None:
            raise SourceError(f"{self.uri}: the stream stopped delivering frames")
        return self._frame(bgr)

    def _frame(self, bgr: np.ndarray) -> Frame:
        i = self.index
        self.index += 1
        return Frame(as_rgb(np.ascontiguousarray(bgr[..., ::-1]), f"{self.uri} frame {i}"), i, time.time(),
                     f"frame{i:06d}", None, 0)

    def _bad(self) -> BadFrameError:
        i = self.index
        self.index += 1
        return BadFrameError(f"{self.uri}: frame {i} cannot be decoded (corrupt data); skipped")

    def _read_video(self) -> Optional[Frame]:
        if self._skipped:  # found while looking past a corrupt stretch: reported one per read, in order
            self._skipped -= 1
            raise self._bad()
        if self._ahead is not None:
            bgr, self._ahead = self._ahead, None
            return self._frame(bgr)
        if self._ended:
            return None
        ok, bgr = self.cap.read()
        if ok and bgr is not None:
            return self._frame(bgr)
        if self._count and self.index >= self._count:
            return None
        # a corrupt frame or the end: only a frame that decodes after the failures tells them apart
        for failed in range(1, self.bad_run_limit):
            ok, bgr = self.cap.read()
            if ok and bgr is not None:
                self._skipped, self._ahead = failed - 1, bgr
                raise self._bad()
        self._ended = True
        if self._count and self.index < self._count:
            raise BadFrameError(f"{self.uri}: frames {self.index}..{self._count - 1} of the {self._count} the file "
                                "declares cannot be read (it is truncated or corrupt at the end)")
        return None

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def open_source(uri: str, transform: Optional[Transform] = None) -> Source:
    """The source for ``uri`` (not yet opened; the capture thread opens it)."""
    if not uri:
        raise ConfigError("no input given (expected synth://, file://dir/, a video file, /dev/videoN, csi://N or rtsp://…)")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "synth":
        return SynthSource(uri, transform)
    if transform is not None:
        raise ConfigError(f"{uri}: attacks apply to synth:// sources only")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    if scheme == "csi":
        sensor = parts.netloc or parts.path.strip("/") or "0"
        if not sensor.isdigit():
            raise ConfigError(f"{uri}: expected csi://N with a sensor number")
        return OpenCVSource(uri, "csi", sensor, params)
    if scheme in ("rtsp", "rtsps", "rtp", "http", "https"):
        return OpenCVSource(uri, "stream", uri, {})
    if scheme == "v4l2":
        return OpenCVSource(uri, "v4l2", parts.netloc + parts.path, params)
    if scheme in ("", "file"):
        raw = (parts.netloc + parts.path) if scheme == "file" else uri.split("?", 1)[0]
        path = Path(os.path.expanduser(raw))
        if str(path).startswith("/dev/video"):
            return OpenCVSource(uri, "v4l2", str(path), params)
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            return OpenCVSource(uri, "video", str(path), params)
        if path.is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS or raw.endswith("/"):
            return FolderSource(uri, path)
        if not path.exists():
            raise SourceError(f"{path}: no such file or folder")
        raise ConfigError(f"{path}: not a folder, an image ({', '.join(IMAGE_EXTENSIONS)}) or a video "
                          f"({', '.join(VIDEO_EXTENSIONS)})")
    raise ConfigError(f"{uri}: unknown input scheme {scheme!r} (expected synth, file, v4l2, csi or rtsp)")
