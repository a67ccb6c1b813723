"""Adversarial examples on disk (``eval robust --cache``), and the batches of one run shared by several processes.

A whole entry is ``DIR/<threat>-<key>.npy``; while a run is under way each finished batch is
``DIR/<threat>-<key>.part<offset>.npy`` and a batch being attacked is claimed by ``….part<offset>.lock`` (host and
process id inside). Every file is written whole and renamed, so a reader never sees half of one. Processes that run
the same evaluation with the same folder (on one machine, or on several that share it) split the batches: each
attacks the batches nobody holds and waits for the others'; each prints the whole result.
The predictions of a scored batch are kept in ``DIR/scores/<key>.npy`` (claimed by ``<key>.lock`` the same way), keyed
by the pipeline and the images, so that no batch is purified twice: not by another process, not by a run resumed.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, TypeVar

import numpy as np
import torch

from edgepure.runtime.errors import ConfigError

__all__ = ["AdvCache", "shared_batches", "shared_scores"]

T = TypeVar("T")

POLL_SECONDS = 5.0  # how often a process waiting for another's batch looks again


class AdvCache:
    """Adversarial examples on disk. A blind attack does not see the defense, so one run serves every
    defense evaluated against the same classifier, images and attack settings; an adaptive one is keyed by
    the purifier too (its weights and settings), and serves every backend that runs that purifier."""

    def __init__(self, directory: Optional[Path]) -> None:
        self.dir = Path(directory) if directory is not None else None
        self._held: set[Path] = set()

    def _path(self, threat: str, key: str, suffix: str = ".npy") -> Optional[Path]:
        return None if self.dir is None else self.dir / f"{threat}-{key}{suffix}"

    def load(self, threat: str, key: str, shape: tuple[int, ...]) -> Optional[torch.Tensor]:
        return _tensor(self._read(self._path(threat, key), shape, "cached adversarial examples have"))

    def save(self, threat: str, key: str, x_adv: torch.Tensor) -> None:
        self._write(self._path(threat, key), x_adv.numpy().astype(np.float32))

    def load_part(self, threat: str, key: str, offset: int, shape: tuple[int, ...]) -> Optional[torch.Tensor]:
        """The batch at ``offset`` of an entry not yet joined, if that batch was done."""
        return _tensor(self._read(self._path(threat, key, f".part{offset:06d}.npy"), shape,
                                  "a cached batch of adversarial examples has"))

    def save_part(self, threat: str, key: str, offset: int, x_adv: torch.Tensor) -> None:
        self._write(self._path(threat, key, f".part{offset:06d}.npy"), x_adv.numpy().astype(np.float32))

    def drop_parts(self, threat: str, key: str) -> None:
        """Remove an entry's batches once the whole entry is saved (another process may be removing them too)."""
        if self.dir is not None:
            for path in self.dir.glob(f"{threat}-{key}.part*.npy"):
                path.unlink(missing_ok=True)

    # -- claims: which process attacks which batch ----------------------------------------------
    def claim(self, threat: str, key: str, offset: int) -> bool:
        """Take the batch at ``offset`` for this process: False while another live process holds it. A claim
        left by a process of this machine that is gone is taken over; one from another machine is not (it cannot
        be checked from here: delete its ``.lock`` file)."""
        return self._claim(self._path(threat, key, f".part{offset:06d}.lock"))

    def release(self, threat: str, key: str, offset: int) -> None:
        self._release(self._path(threat, key, f".part{offset:06d}.lock"))

    # -- predictions: a pipeline's reading of a batch, so that it is scored once ----------------
    def _score_path(self, key: str, suffix: str) -> Optional[Path]:
        return None if self.dir is None else self.dir / "scores" / f"{key}{suffix}"

    def load_scores(self, key: str, n: int) -> Optional[np.ndarray]:
        """The predicted classes of a batch of ``n`` images scored before (``scores/<key>.npy``), if any."""
        return self._read(self._score_path(key, ".npy"), (n,), "cached predictions have", np.int64)

    def save_scores(self, key: str, pred: np.ndarray) -> None:
        self._write(self._score_path(key, ".npy"), np.asarray(pred, dtype=np.int64))

    def claim_scores(self, key: str) -> bool:
        return self._claim(self._score_path(key, ".lock"))

    def release_scores(self, key: str) -> None:
        self._release(self._score_path(key, ".lock"))

    def _claim(self, lock: Optional[Path]) -> bool:
        if lock is None:
            return True
        lock.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not _stale(lock):
                    return False
                # two processes that both find it stale may both take it: the batch is attacked twice, with the
                # same seed, and written whole each time; nothing is lost
                lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{socket.gethostname()} {os.getpid()}\n")
            self._held.add(lock)
            return True
        return False

    def _release(self, lock: Optional[Path]) -> None:
        if lock is not None and lock in self._held:
            self._held.discard(lock)
            lock.unlink(missing_ok=True)

    def release_all(self) -> None:
        """Give back every batch this process holds (it stops: interrupted, or an error)."""
        for lock in list(self._held):
            lock.unlink(missing_ok=True)
        self._held.clear()

    # -- files -------------------------------------------------------------------------------------
    @staticmethod
    def _read(path: Optional[Path], shape: tuple[int, ...], what: str, dtype: type = np.float32) -> Optional[np.ndarray]:
        if path is None:
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:  # not written yet, or joined and removed by another process meanwhile
            return None
        except ValueError as e:  # not an .npy file (a truncated or foreign one)
            raise ConfigError(f"{path}: {what} no readable array ({e}); delete the file") from None
        if arr.shape != shape or arr.dtype != dtype:
            raise ConfigError(f"{path}: {what} shape {arr.shape} {arr.dtype}, expected {shape} "
                              f"{np.dtype(dtype).name}; delete the file")
        return arr

    @staticmethod
    def _write(path: Optional[Path], arr: np.ndarray) -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # written whole under a name of this process's own, then renamed: never a half-written entry
        tmp = path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}.tmp.npy")
        np.save(tmp, arr, allow_pickle=False)
        os.replace(tmp, path)


def _tensor(arr: Optional[np.ndarray]) -> Optional[torch.Tensor]:
    return None if arr is None else torch.from_numpy(arr)


def _once(load: Callable[[], Optional[T]], claim: Callable[[], bool], release: Callable[[], None],
          make: Callable[[], T], save: Callable[[T], None]) -> Optional[T]:
    """What ``load`` finds; else, if this process gets the claim, made here and saved (unless its last holder finished
    it between the look and the claim); None while another process holds it."""
    got = load()
    if got is not None or not claim():
        return got
    got = load()
    if got is None:
        got = make()
        save(got)
    release()
    return got


def _stale(lock: Path) -> bool:
    """Whether a claim was left by a process of this machine that no longer runs."""
    try:
        text = lock.read_text().split()
        if len(text) != 2 or not text[1].isdigit():
            # a claim is written right after it is made; one still without its owner after a minute is left over
            return time.time() - lock.stat().st_mtime > 60.0
    except FileNotFoundError:
        return True
    host, pid = text[0], int(text[1])
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def shared_batches(cache: AdvCache, threat: str, key: str, total: tuple[int, ...], batch_size: int,
                   attack: Callable[[int], torch.Tensor], on_wait: Optional[Callable[[int], None]] = None,
                   ) -> Iterator[tuple[int, torch.Tensor]]:
    """The adversarial batch at each offset of an entry of shape ``total`` in batches of ``batch_size`` (in the order
    they become available): read from the cache if a run finished it, else attacked here (``attack(offset)``) and
    kept, unless another process holds it; those are waited for at the end (another process may join the batches
    into the whole entry meanwhile). ``on_wait(offset)`` is told when this process starts waiting for another's
    batch. Without a cache folder (or ``key``) every batch is attacked here."""
    starts = range(0, total[0], batch_size)
    if cache.dir is None or not key:
        for s in starts:
            yield s, attack(s)
        return

    joined: list[torch.Tensor] = []  # the whole entry, read once another process has joined the batches into it

    def done(s: int) -> Optional[torch.Tensor]:
        if joined:
            return joined[0][s : s + batch_size]
        x_adv = cache.load_part(threat, key, s, (min(batch_size, total[0] - s), *total[1:]))
        if x_adv is None:  # joined into the whole entry by a process that finished
            whole = cache.load(threat, key, total)
            if whole is not None:
                joined.append(whole)
                x_adv = whole[s : s + batch_size]
        return x_adv

    def fetch(s: int) -> Optional[torch.Tensor]:
        """The batch at ``s`` if it is done, else attacked here and kept; None while another process holds it."""
        return _once(lambda: done(s), lambda: cache.claim(threat, key, s), lambda: cache.release(threat, key, s),
                     lambda: attack(s), lambda x_adv: cache.save_part(threat, key, s, x_adv))

    pending: list[int] = []

    def finished_meanwhile() -> Iterator[tuple[int, torch.Tensor]]:
        for s in list(pending):
            x_adv = done(s)
            if x_adv is not None:
                pending.remove(s)
                yield s, x_adv

    try:
        for s in starts:
            yield from finished_meanwhile()  # scored (and counted by the progress bar) as soon as they are there
            x_adv = fetch(s)
            if x_adv is None:
                pending.append(s)
            else:
                yield s, x_adv
        for s in pending:
            x_adv = done(s)
            if x_adv is None and on_wait is not None:
                on_wait(s)
            while x_adv is None:  # taken over here if its holder stops without finishing it
                time.sleep(POLL_SECONDS)
                x_adv = fetch(s)
            yield s, x_adv
    finally:
        cache.release_all()


def shared_scores(cache: AdvCache, batches: Iterable[tuple[int, torch.Tensor]], key_of: Callable[[int, torch.Tensor], str],
                  score: Callable[[int, torch.Tensor], np.ndarray], on_wait: Optional[Callable[[int], None]] = None,
                  ) -> Iterator[tuple[int, np.ndarray]]:
    """The predictions for each ``(offset, images)`` batch: read from the cache if any process scored those images with
    the same pipeline (``key_of(offset, images)``), else scored here (``score(offset, images)``) and kept, unless
    another process is scoring them: those are taken when they appear, or waited for at the end (and scored here if
    that process stops). Without a cache folder every batch is scored here."""
    if cache.dir is None:
        for s, x in batches:
            yield s, score(s, x)
        return

    def fetch(key: str, s: int, x: torch.Tensor) -> Optional[np.ndarray]:
        return _once(lambda: cache.load_scores(key, len(x)), lambda: cache.claim_scores(key),
                     lambda: cache.release_scores(key), lambda: np.asarray(score(s, x), dtype=np.int64),
                     lambda pred: cache.save_scores(key, pred))

    pending: list[tuple[str, int, torch.Tensor]] = []
    try:
        for s, x in batches:
            for item in list(pending):
                pred = cache.load_scores(item[0], len(item[2]))
                if pred is not None:
                    pending.remove(item)
                    yield item[1], pred
            key = key_of(s, x)
            pred = fetch(key, s, x)
            if pred is None:
                pending.append((key, s, x))
            else:
                yield s, pred
        for key, s, x in pending:
            pred = cache.load_scores(key, len(x))
            if pred is None and on_wait is not None:
                on_wait(s)
            while pred is None:
                time.sleep(POLL_SECONDS)
                pred = fetch(key, s, x)
            yield s, pred
    finally:
        cache.release_all()
