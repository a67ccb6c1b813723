"""Writing artifact directories (a model directory, a variant set, an INT8 twin) safely.

A directory is written beside its destination under a hidden name (``.NAME.xxxxxxxx``) and renamed into
place only when it is complete, so nothing half-written ever stands at the destination. ``--force``
replaces only what edgepure wrote (or an empty directory), never a folder of someone's files. A run
killed mid-write leaves its hidden directory behind; the next run to the same destination removes it
once no running process owns it (each staging directory records its writer in a marker file).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from edgepure.runtime.errors import ConfigError
from edgepure.runtime.manifest import MANIFEST_NAME, make_public
from edgepure.runtime.variants import VARIANTS_NAME

__all__ = ["MARKER", "check_replaceable", "remove_stale", "replace_dir", "staging_dir"]

# inside a staging directory while it is written: who writes it (removed before the rename into place)
MARKER = ".edgepure-staging.json"
# a staging directory whose writer cannot be asked (it ran on another machine sharing the folder, or left no
# marker) counts as abandoned after this long; no export or calibration runs for a day
STALE_SECONDS = 24 * 3600


def staging_dir(out: Path) -> Path:
    """A new empty directory beside ``out`` (hidden, on the same file system) with an ordinary mode, in which an
    artifact directory is written before :func:`replace_dir` renames it to ``out``. Abandoned staging
    directories of ``out`` are removed first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    make_public(tmp)  # mkdtemp's 0700 would make the shipped directory private
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "out": out.name}
    (tmp / MARKER).write_text(json.dumps(owner) + "\n")
    return tmp


def replace_dir(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished staging directory ``tmp`` to ``out``; an existing ``out`` is replaced only where
    :func:`check_replaceable` allows it (checked again here: the folder may have changed during the work)."""
    check_replaceable(out, force)
    (tmp / MARKER).unlink(missing_ok=True)
    if not os.path.lexists(out):
        os.replace(tmp, out)
        return
    old = out.with_name(out.name + ".old-" + str(os.getpid()))
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _holds(path: Path, keys: tuple[str, ...]) -> bool:
    """Whether ``path`` is a JSON object with ``keys`` (an edgepure manifest.json, not any file of that name)."""
    try:
        doc: Any = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and all(k in doc for k in keys)


def check_replaceable(out: Path, force: bool) -> None:
    """ConfigError unless ``out`` is free, or ``force`` is given and ``out`` is a directory that edgepure may
    replace: an empty one, a model directory (an edgepure ``manifest.json``) or a variant set (``variants.json``)."""
    if not os.path.lexists(out):
        return
    if not force:
        raise ConfigError(f"{out}: exists; pass --force to replace it")
    why = "is a symbolic link" if out.is_symlink() else None if out.is_dir() else "exists and is not a directory"
    if why is None:
        names = sorted(p.name for p in out.iterdir())
        if not names or _holds(out / MANIFEST_NAME, ("schema", "models")) or _holds(out / VARIANTS_NAME, ("variants",)):
            return
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        why = f"not written by edgepure (no edgepure {MANIFEST_NAME} or {VARIANTS_NAME}; it holds {shown})"
    raise ConfigError(f"{out}: {why}. --force replaces only a model directory, a variant set or an empty "
                      "directory: choose another output, or remove it yourself")


def _alive(pid: int) -> bool:
    if os.name != "posix" or pid <= 0:  # os.kill(pid, 0) probes a process only on POSIX
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:  # moved into place or removed meanwhile by its writer
        return 0.0


def _abandoned(d: Path, name: str) -> bool:
    """Whether the hidden directory ``d`` beside output ``name`` is a staging directory that nobody writes."""
    try:
        owner: Any = json.loads((d / MARKER).read_text())
    except FileNotFoundError:
        owner = None
    except (OSError, ValueError):
        return False  # a marker we cannot read: not ours to judge
    if owner is None:
        # no marker: an earlier edgepure's staging directory (mkdtemp's 8-character suffix), or one being made now
        legacy = re.fullmatch(re.escape(f".{name}.") + r"[a-z0-9_]{8}", d.name) is not None
        return legacy and _age(d) > STALE_SECONDS
    if not isinstance(owner, dict) or owner.get("out") != name:
        return False
    pid = owner.get("pid")
    if owner.get("host") == socket.gethostname() and isinstance(pid, int) and not isinstance(pid, bool):
        return not _alive(pid)
    return _age(d / MARKER) > STALE_SECONDS


def remove_stale(out: Path) -> list[Path]:
    """Remove the staging directories of ``out`` left by killed runs (a live run's directory stays); return them."""
    removed = []
    prefix = f".{out.name}."
    for d in out.parent.iterdir() if out.parent.is_dir() else []:
        if d.name.startswith(prefix) and d.is_dir() and not d.is_symlink() and _abandoned(d, out.name):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed
