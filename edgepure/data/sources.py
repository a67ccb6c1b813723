"""File trees the readers walk: a directory, a zip archive, a tar archive, or several of them merged.

Names are POSIX paths relative to the tree. Reading a member that is missing or corrupt raises a
:class:`DataError` that names the archive and the member.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

from edgepure.runtime.errors import DataError, ImageDecodeError

__all__ = ["DirTree", "FileTree", "MergedTree", "TarTree", "ZipTree", "open_tree"]


class FileTree:
    """A read-only view of files: ``names()`` and ``read(name)``."""

    label: str

    def names(self) -> list[str]:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def where(self, name: str) -> str:
        return f"{self.label}:{name}"


class DirTree(FileTree):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = str(root)
        self._names: list[str] | None = None

    def names(self) -> list[str]:
        if self._names is None:
            self._names = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return self._names

    def read(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except OSError as exc:
            raise DataError(f"{self.root / name}: cannot read ({exc.strerror or exc})") from None

    def where(self, name: str) -> str:
        return str(self.root / name)


class ZipTree(FileTree):
    def __init__(self, path: Path) -> None:
        self.label = str(path)
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{path}: not a readable zip archive ({exc})") from None
        self._names = sorted(i.filename for i in self._zip.infolist() if not i.is_dir())

    def names(self) -> list[str]:
        return self._names

    def read(self, name: str) -> bytes:
        try:
            return self._zip.read(name)
        except KeyError:
            raise DataError(f"{self.label}: no member {name}") from None
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ImageDecodeError(f"{self.label}:{name}: corrupt archive member ({exc})") from None


class TarTree(FileTree):
    def __init__(self, path: Path) -> None:
        self.label = str(path)
        try:
            self._tar = tarfile.open(path)
            members = self._tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{path}: not a readable tar archive ({exc})") from None
        self._members = {m.name.lstrip("./"): m for m in members if m.isfile()}

    def names(self) -> list[str]:
        return sorted(self._members)

    def read(self, name: str) -> bytes:
        member = self._members.get(name)
        if member is None:
            raise DataError(f"{self.label}: no member {name}")
        try:
            f = self._tar.extractfile(member)
            assert f is not None
            return f.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{self.label}:{name}: corrupt archive member ({exc})") from None


class MergedTree(FileTree):
    """Several trees seen as one (e.g. the official training, test and test-labels zips side by side)."""

    def __init__(self, trees: list[FileTree], label: str) -> None:
        self.label = label
        self._owner: dict[str, FileTree] = {}
        for tree in trees:
            for name in tree.names():
                self._owner.setdefault(name, tree)

    def names(self) -> list[str]:
        return sorted(self._owner)

    def read(self, name: str) -> bytes:
        tree = self._owner.get(name)
        if tree is None:
            raise DataError(f"{self.label}: no file {name}")
        return tree.read(name)

    def where(self, name: str) -> str:
        tree = self._owner.get(name)
        return tree.where(name) if tree else f"{self.label}:{name}"


_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def _is_archive(p: Path) -> bool:
    return p.name.lower().endswith(_ARCHIVE_SUFFIXES)


def open_tree(path: str | Path) -> FileTree:
    """Open a directory or an archive; a directory that holds only archives is seen as their merge."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    if p.is_file():
        if p.name.lower().endswith(".zip"):
            return ZipTree(p)
        if _is_archive(p):
            return TarTree(p)
        raise DataError(f"{p}: expected a directory, a .zip or a .tar(.gz) archive")
    return DirTree(p)


def archives_in(directory: Path) -> list[Path]:
    return sorted(c for c in directory.iterdir() if c.is_file() and _is_archive(c))
