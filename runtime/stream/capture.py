"""Capture in its own thread, with a bounded queue and reopen-with-backoff.

A live source (camera, stream, paced ``synth://``) goes through a latest-frame-wins queue: when the model
is slower than the camera the oldest waiting frame is dropped (and counted) instead of the loop falling
behind. A file source blocks instead, so every frame of a video or folder is processed. A frame the
source marks bad is counted and skipped; a failing stream is closed and reopened with exponential
backoff, up to ``retries`` consecutive failures.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Optional

from edgepure.runtime.stream.sources import BadFrameError, Frame, Source, SourceError

__all__ = ["Capture", "CaptureStats"]

log = logging.getLogger("edgepure.runtime.capture")

_END = object()


@dataclass
class CaptureStats:
    captured: int = 0
    dropped: int = 0
    bad_frames: int = 0
    reopens: int = 0
    failure: Optional[str] = None  # why the source gave up, if it did


class Capture:
    """Runs ``source`` in a daemon thread; :meth:`get` hands frames to the loop, ``None`` at the end."""

    def __init__(self, source: Source, queue_size: int = 1, retries: int = 5, backoff: float = 0.1,
                 max_backoff: float = 2.0) -> None:
        self.source = source
        self.stats = CaptureStats()
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, queue_size) if source.live else 4)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def start(self) -> "Capture":
        """Open the source (errors opening it the first time surface here) and start the thread."""
        self.source.open()
        self._thread = threading.Thread(target=self._run, name=f"capture {self.source.uri}", daemon=True)
        self._thread.start()
        return self

    def get(self, timeout: Optional[float] = None) -> Optional[Frame]:
        """The next frame, or ``None`` when the source has ended (or failed for good: see ``stats.failure``)."""
        item = self._queue.get(timeout=timeout)
        if item is _END:
            self._queue.put(_END)  # later calls see the end too
            if self._error is not None:
                raise self._error
            return None
        return item  # type: ignore[return-value]

    def stop(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.source.close()

    # -- the thread -------------------------------------------------------------------------------
    def _put(self, frame: Frame) -> None:
        if self.source.live:
            while True:
                try:
                    self._queue.put_nowait(frame)
                    return
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                        self.stats.dropped += 1
                    except queue.Empty:
                        pass
        while not self._stop.is_set():
            try:
                self._queue.put(frame, timeout=0.1)
                return
            except queue.Full:
                continue

    def _reopen(self, reason: str) -> bool:
        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            log.warning("%s: %s; reopening (attempt %d/%d) in %.2f s", self.source.uri, reason, attempt,
                        self.retries, delay)
            if self._stop.wait(delay):
                return False
            self.source.close()
            try:
                self.source.open()
            except SourceError as exc:
                reason = str(exc)
                delay = min(delay * 2, self.max_backoff)
                continue
            self.stats.reopens += 1
            return True
        self.stats.failure = f"{self.source.uri}: gave up after {self.retries} reopen attempts ({reason})"
        log.error("%s", self.stats.failure)
        return False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    frame = self.source.read()
                except BadFrameError as exc:
                    self.stats.bad_frames += 1
                    log.warning("skipped a bad frame: %s", exc)
                    continue
                except SourceError as exc:
                    if self._reopen(str(exc)):
                        continue
                    break
                if frame is None:
                    break
                self.stats.captured += 1
                self._put(frame)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop thread, which re-raises it
            self._error = exc
        finally:
            while True:
                try:
                    self._queue.put(_END, timeout=0.1)
                    break
                except queue.Full:
                    if self._stop.is_set() or self.source.live:
                        try:
                            self._queue.get_nowait()
                            if not self._stop.is_set():
                                self.stats.dropped += 1
                        except queue.Empty:
                            pass
