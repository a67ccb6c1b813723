"""Capture in its own thread, with a bounded queue and reopen-with-backoff.

A live source (camera, stream, paced ``synth://``) goes through a latest-frame-wins queue: when the model
is slower than the camera the oldest waiting frame is dropped (and counted) instead of the loop falling
behind. A file source blocks instead, so every frame of a video or folder is processed. A frame the
source marks bad is counted and skipped. A failing stream is closed and reopened with capped exponential
backoff until it opens again or ``reconnect_timeout`` seconds have passed since it failed (0: never give
up; a camera on a vehicle can be gone for minutes). A live source that cannot be opened at all is retried
the same way, since a camera or stream may simply not be up yet; a file source that cannot be opened is
an error at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Optional

from edgepure.runtime.errors import ConfigError
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

    def __init__(self, source: Source, queue_size: int = 1, reconnect_timeout: float = 60.0, backoff: float = 0.1,
                 max_backoff: float = 2.0, retries: Optional[int] = None) -> None:
        if not (reconnect_timeout >= 0 and backoff > 0 and max_backoff >= backoff):  # also refuses NaN
            raise ConfigError(f"reconnect timeout must be ≥ 0 s (0: never give up) and 0 < backoff ≤ max backoff, "
                              f"got {reconnect_timeout}, {backoff} and {max_backoff}")
        self.source = source
        self.stats = CaptureStats()
        self.reconnect_timeout, self.backoff, self.max_backoff = reconnect_timeout, backoff, max_backoff
        self.retries = retries  # an optional cap on the attempts as well
        self._first_error: Optional[str] = None
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, queue_size) if source.live else 4)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def start(self) -> "Capture":
        """Open the source and start the thread. A file source that cannot be opened raises here; a live one
        is retried in the thread (the loop waits for its first frame)."""
        try:
            self.source.open()
        except SourceError as exc:
            if not self.source.live:
                raise
            self._first_error = str(exc)
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

    def _reopen(self, reason: str, first: bool = False) -> bool:
        """Close and open the source again, waiting ``backoff`` seconds doubling up to ``max_backoff``
        between attempts, until it opens (True) or the capture stops or the time or attempts run out (False)."""
        t0, delay, attempt = time.monotonic(), self.backoff, 0
        limit = f"giving up after {self.reconnect_timeout:g} s" if self.reconnect_timeout > 0 else "no time limit"
        while True:
            attempt += 1
            if self.reconnect_timeout > 0:  # the last attempt falls on the deadline, not a backoff after it
                delay = min(delay, max(0.0, t0 + self.reconnect_timeout - time.monotonic()))
            log.warning("%s: %s; %s attempt %d in %.2f s (%s)", self.source.uri, reason,
                        "opening" if first else "reconnecting", attempt, delay, limit)
            if self._stop.wait(delay):
                return False
            self.source.close()
            try:
                self.source.open()
            except SourceError as exc:
                reason = str(exc)
            else:
                if not first:
                    self.stats.reopens += 1
                log.info("%s: %s after %d attempts", self.source.uri, "opened" if first else "reconnected", attempt)
                return True
            elapsed = time.monotonic() - t0
            if ((self.reconnect_timeout > 0 and elapsed >= self.reconnect_timeout)
                    or (self.retries is not None and attempt >= self.retries)):
                self.stats.failure = (f"{self.source.uri}: gave up after {attempt} attempts in {elapsed:.1f} s "
                                      f"({reason})")
                log.error("%s", self.stats.failure)
                return False
            delay = min(delay * 2, self.max_backoff)

    def _run(self) -> None:
        try:
            if self._first_error is not None and not self._reopen(self._first_error, first=True):
                return
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
