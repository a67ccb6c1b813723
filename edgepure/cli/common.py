"""What every command group shares: user-error handling and small option helpers."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import warnings
from typing import Annotated, Any, Callable, Iterator, TypeVar

import typer

from edgepure.runtime.errors import EdgepureError, MissingDependencyError

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["echo_json", "missing_extra", "parse_settings", "progress_lines", "user_errors", "warnings_as_lines"]

# the optional packages commands import, and the extra of pyproject.toml that installs each
_EXTRAS = {"torch": "torch", "onnx": "torch", "onnxscript": "torch", "onnxslim": "torch", "safetensors": "torch",
           "PIL": "torch", "tqdm": "torch", "matplotlib": "torch", "onnxruntime": "ort", "cv2": "camera"}
# their pip names, where these differ from the module's
_PACKAGES = {"PIL": "pillow", "cv2": "opencv-python-headless"}


# ``--device`` of the commands that run PyTorch networks (checked by ``edgepure.models.loading.resolve_device``)
DeviceOption = Annotated[str, typer.Option(
    "--device", help="PyTorch device of the networks: cpu, cuda or cuda:N. Random draws (data order, augmentation, "
                     "noise, attack starts) stay on the CPU, so they are the same on every device.")]


def missing_extra(exc: ImportError) -> MissingDependencyError | None:
    """The :class:`MissingDependencyError` (naming the extra to install) for an optional package that is not
    installed; None for any other import error, which is a bug: a module of edgepure itself, or an installed
    package that fails to import (a plain ImportError, not ModuleNotFoundError)."""
    name = (exc.name or "").split(".")[0] if isinstance(exc, ModuleNotFoundError) else ""
    extra = _EXTRAS.get(name)
    if extra is None:
        return None
    package = _PACKAGES.get(name, name)
    # inspect and calibrate need onnx alone: on a device that is lighter than the whole export side
    hint = f"pip install onnx, or pip install 'edgepure[{extra}]' for the whole export side" if name == "onnx" else None
    return MissingDependencyError(package, "this command", extra=extra, hint=hint)


def user_errors(fn: F) -> F:
    """Print an :class:`EdgepureError` as ``error: …`` on stderr (no traceback) and exit with status 1; an optional
    package that is not installed is one too, naming the extra that installs it (:func:`missing_extra`).

    Any other exception is a bug and keeps its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgepureError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except ImportError as exc:
            missing = missing_extra(exc)
            if missing is None:
                raise
            typer.echo(f"error: {missing}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def echo_json(obj: Any) -> None:
    """One JSON object on stdout (progress bars and logs go to stderr)."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


def progress_lines(quiet: bool, prefix: str = "") -> Callable[[str], None] | None:
    """Progress as lines on stderr (as ``edgepure train`` logs), each with the seconds since the command started;
    None (silence) when ``quiet`` (``--json``: stdout carries the result, stderr stays clean for scripts)."""
    if quiet:
        return None
    import time

    t0 = time.monotonic()
    return lambda m: typer.echo(f"[{time.monotonic() - t0:6.1f} s] {prefix}{m}", err=True)


def parse_settings(items: list[str], option: str) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON literals (numbers, true/false, quoted strings) or plain strings."""
    from edgepure.runtime.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} expects key=value, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


@contextlib.contextmanager
def warnings_as_lines(category: type[Warning]) -> Iterator[None]:
    """Show the ``category`` warnings raised inside as ``warning: …`` lines on stderr, each distinct message once
    (the CLI's style rather than Python's ``file:line:`` display); other warnings are shown as Python would."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category)
        try:
            yield
        finally:
            shown: set[str] = set()
            for w in caught:
                if not issubclass(w.category, category):
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)
                elif str(w.message) not in shown:
                    shown.add(str(w.message))
                    typer.echo(f"warning: {w.message}", err=True)
