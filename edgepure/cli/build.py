"""``edgepure build``: TensorRT engines for a model directory, cached by TensorRT version and GPU."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgepure.cli.common import echo_json, user_errors

__all__ = ["Precision", "Role", "build", "build_cmd", "parse_size"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class Role(str, Enum):
    classifier = "classifier"
    purifier = "purifier"
    pipeline = "pipeline"


def parse_size(text: str, option: str = "--workspace") -> int:
    """Bytes from ``512M``, ``1G``, ``2GiB``, ``64k`` or a plain byte count (binary units); ConfigError if bad."""
    from edgepure.runtime.errors import ConfigError

    m = _SIZE.match(text)
    if m is None:
        raise ConfigError(f"{option} expects a size such as 512M, 1G, 2G or a number of bytes, got {text!r}")
    size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size <= 0:
        raise ConfigError(f"{option} must be more than 0 bytes, got {text!r}")
    return size


def build(
    directory: Annotated[Path, typer.Argument(help="A model directory written by 'edgepure export'.")],
    precision: Annotated[Optional[Precision], typer.Option(
        help="Engine precision (default: the graph's). fp16 on an fp32 graph works on TensorRT 10 only; "
             "on TensorRT 11 export with --precision fp16. int8 needs 'edgepure calibrate' first.")] = None,
    role: Annotated[Role, typer.Option(help="Which graph of the model directory to build.")] = Role.pipeline,
    workspace: Annotated[str, typer.Option(help="TensorRT workspace limit: 512M, 1G, 2G or bytes.")] = "1G",
    dla_core: Annotated[Optional[int], typer.Option(
        help="Build for this DLA core (Jetson Orin AGX/NX; fp16/int8), falling back to the GPU per layer.")] = None,
    timing_cache: Annotated[Optional[Path], typer.Option(
        help="Timing cache file to read and update (default: DIR/engines/timing.cache).")] = None,
    version_compatible: Annotated[bool, typer.Option(
        help="A version-compatible engine (runs on later TensorRT, e.g. the lean runtime; may be slower).")] = False,
    force: Annotated[bool, typer.Option(help="Rebuild even if a matching engine is cached.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the engine's manifest entry as JSON.")] = False,
) -> None:
    """Build the TensorRT engine of a model directory on this device (cached by ONNX, TensorRT version and GPU)."""
    size = parse_size(workspace)
    from edgepure.calibration.build import build_engine, describe_engine

    entry = build_engine(directory, role=role.value, precision=precision.value if precision else None,
                         workspace_bytes=size, dla_core=dla_core, timing_cache=timing_cache,
                         version_compatible=version_compatible, force=force)
    if as_json:
        echo_json(entry)
    elif entry["cached"]:
        typer.echo(f"cached: {directory}/{describe_engine(entry)} (--force rebuilds it)")
    else:
        typer.echo(f"built: {directory}/{describe_engine(entry)} in {entry['build_seconds']:.1f} s")


build_cmd = user_errors(build)
