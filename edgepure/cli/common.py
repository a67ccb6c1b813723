"""What every command group shares: user-error handling and small option helpers."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable, TypeVar

import typer

from edgepure.runtime.errors import EdgepureError

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["echo_json", "parse_settings", "user_errors"]


def user_errors(fn: F) -> F:
    """Print an :class:`EdgepureError` as ``error: …`` on stderr (no traceback) and exit with status 1.

    Any other exception is a bug and keeps its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgepureError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def echo_json(obj: Any) -> None:
    """One JSON object on stdout (progress bars and logs go to stderr)."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


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
