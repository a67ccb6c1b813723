"""CIFAR-10 from the official python batches (``cifar-10-batches-py``, or the ``cifar-10-python.tar.gz``).

That format is pickle, and unpickling runs whatever a file asks for. The reader uses a restricted
unpickler: it accepts plain containers, strings, bytes and numbers, and the numpy array records the
official files hold, which it rebuilds itself from raw bytes (numpy's own reconstruction code never
runs). Any other global a file names is refused with :class:`UnsafeFileError`.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from edgepure.data.base import ImageSet
from edgepure.data.sources import FileTree, open_tree
from edgepure.runtime.classes import CIFAR10_CLASSES
from edgepure.runtime.errors import DataError, UnsafeFileError

__all__ = ["load_cifar10", "safe_unpickle"]

_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCHES = ("test_batch",)
_ALLOWED_DTYPES = {"u1", "i1", "u2", "i2", "<u2", "<i2", "i4", "<i4", "u4", "<u4", "i8", "<i8", "|u1", "|i1"}


class _ArrayRecord:
    """Stands in for ``numpy.ndarray`` during unpickling; holds the state, builds the array afterwards."""

    def __init__(self, *args: Any) -> None:
        self.state: tuple[Any, ...] | None = None

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.state = state


class _DtypeRecord:
    """Stands in for ``numpy.dtype``: remembers the type code, refuses object dtypes."""

    def __init__(self, code: Any = None, align: Any = False, copy: Any = False) -> None:
        if isinstance(code, bytes):
            code = code.decode("latin1")
        if not isinstance(code, str) or code.lstrip("<>|=") not in {c.lstrip("<>|") for c in _ALLOWED_DTYPES}:
            raise UnsafeFileError(f"refusing numpy dtype {code!r} in a pickle (only plain integer arrays are allowed)")
        self.code = code
        self.order = "|"

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]
        if isinstance(state, tuple) and len(state) > 3 and state[3] is not None:
            raise UnsafeFileError("refusing a structured numpy dtype in a pickle")


def _reconstruct(cls: Any, shape: Any, dtype: Any) -> _ArrayRecord:
    if cls is not _ArrayRecord:
        raise UnsafeFileError("refusing an array reconstruction of a type other than numpy.ndarray")
    return _ArrayRecord()


def _codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Python 3 pickles of bytes (protocol ≤ 2) go through ``_codecs.encode(str, 'latin1')``: allow that alone."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "ascii"):
        raise UnsafeFileError(f"refusing _codecs.encode of {type(obj).__name__} with encoding {encoding!r}")
    return obj.encode(encoding, errors)


_SAFE_GLOBALS = {
    ("_codecs", "encode"): _codecs_encode,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _ArrayRecord,
    ("numpy", "dtype"): _DtypeRecord,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, name: str) -> None:
        super().__init__(file, encoding="bytes")
        self._name = name

    def find_class(self, module: str, name: str) -> Any:
        obj = _SAFE_GLOBALS.get((module, name))
        if obj is None:
            raise UnsafeFileError(
                f"{self._name}: refusing to unpickle {module}.{name} "
                "(only plain containers, bytes, numbers and integer arrays are accepted)"
            )
        return obj


def _to_plain(obj: Any, name: str) -> Any:
    """Turn the unpickled structure into plain Python + numpy, building arrays from their raw bytes."""
    if isinstance(obj, _ArrayRecord):
        if obj.state is None or len(obj.state) != 5:
            raise UnsafeFileError(f"{name}: malformed array record in the pickle")
        _version, shape, dtype, fortran, raw = obj.state
        if not isinstance(dtype, _DtypeRecord) or not isinstance(raw, (bytes, bytearray)):
            raise UnsafeFileError(f"{name}: array record without a plain dtype and raw bytes")
        code = dtype.code.lstrip("<>|=")
        order = ">" if dtype.order == ">" else "<"
        arr = np.frombuffer(bytes(raw), dtype=np.dtype(order + code) if code[1:] != "1" else np.dtype(code))
        shape = tuple(int(s) for s in shape)
        if int(np.prod(shape)) != arr.size:
            raise DataError(f"{name}: array of shape {shape} has {arr.size} elements of data")
        return arr.reshape(shape, order="F" if fortran else "C")
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): _to_plain(v, name) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_plain(v, name) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_plain(v, name) for v in obj)
    return obj


def safe_unpickle(data: bytes, name: str = "<bytes>") -> Any:
    """Unpickle ``data`` accepting only plain containers, bytes, numbers and integer numpy arrays."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), name).load()
    except UnsafeFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise DataError(f"{name}: not a readable CIFAR batch ({type(exc).__name__}: {exc})") from None
    return _to_plain(obj, name)


def _locate(tree: FileTree, source: str) -> str:
    names = set(tree.names())
    for prefix in ("", "cifar-10-batches-py/"):
        if prefix + "test_batch" in names or prefix + "data_batch_1" in names:
            return prefix
    raise DataError(f"{source}: not a CIFAR-10 python tree (expected cifar-10-batches-py/data_batch_1 … test_batch)")


def _read_batch(tree: FileTree, name: str) -> tuple[np.ndarray, np.ndarray]:
    where = tree.where(name)
    batch = safe_unpickle(tree.read(name), where)
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DataError(f"{where}: expected a dict with 'data' and 'labels'")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise DataError(f"{where}: expected data of shape N×3072 uint8, found {data.shape} {data.dtype}")
    if len(labels) != len(data):
        raise DataError(f"{where}: {len(data)} images but {len(labels)} labels")
    bad = np.nonzero((labels < 0) | (labels >= 10))[0]
    if bad.size:
        raise DataError(f"{where}: label {labels[bad[0]]} of image {bad[0]} out of range (expected 0..9)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10(path: str | Path, split: str = "train") -> ImageSet:
    """Load CIFAR-10 ``train`` (the five data batches) or ``test`` into memory."""
    if split not in ("train", "test"):
        raise DataError(f"unknown CIFAR-10 split {split!r} (expected train or test)")
    p = Path(path).expanduser()
    tree = open_tree(p)
    prefix = _locate(tree, str(p))
    names = set(tree.names())
    batches = _TRAIN_BATCHES if split == "train" else _TEST_BATCHES
    missing = [b for b in batches if prefix + b not in names]
    if missing:
        raise DataError(f"{p}: CIFAR-10 batch files missing: {', '.join(missing)}")
    parts = [_read_batch(tree, prefix + b) for b in batches]
    images = np.ascontiguousarray(np.concatenate([im for im, _ in parts]))
    labels = np.concatenate([lb for _, lb in parts])
    names_out = [f"{b}[{i}]" for b, (im, _) in zip(batches, parts) for i in range(len(im))]
    return ImageSet(images, labels, names_out, CIFAR10_CLASSES, source=str(p), meta={"split": split})
