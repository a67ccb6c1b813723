"""The one small interface every inference backend implements.

A backend holds one loaded model (an ONNX file or a TensorRT engine) and runs it on host numpy arrays:

    backend.inputs   -> [TensorSpec(name, shape, dtype), ...]   static shapes
    backend.outputs  -> [TensorSpec(...), ...]
    backend.run({name: array}) -> [array, ...]                   in ``outputs`` order
    backend.close()

Backends live one per module (``ort.py``, ``tensorrt.py``) and import their heavy package lazily, so that
choosing ONNX Runtime never touches TensorRT and the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from edgepure.runtime.errors import ConfigError

__all__ = ["Backend", "TensorSpec", "check_feed"]


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: its name, static shape and numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@runtime_checkable
class Backend(Protocol):
    name: str
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...

    def close(self) -> None: ...


def check_feed(specs: Sequence[TensorSpec], feed: Mapping[str, np.ndarray], where: str) -> None:
    """Refuse a feed whose names, shapes or dtypes do not match ``specs`` (expected vs found)."""
    if len(feed) != len(specs) or any(s.name not in feed for s in specs):
        raise ConfigError(f"{where}: expected inputs {sorted(s.name for s in specs)}, got {sorted(feed)}")
    for s in specs:
        a = feed[s.name]
        if a.shape != s.shape:
            raise ConfigError(f"{where}: input {s.name!r} expected shape {list(s.shape)}, got {list(a.shape)}")
        if a.dtype.name != s.dtype:
            raise ConfigError(f"{where}: input {s.name!r} expected dtype {s.dtype}, got {a.dtype}")
