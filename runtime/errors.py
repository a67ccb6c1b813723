"""User-facing errors.

Every error a user can cause (a missing file, a corrupt image, a wrong shape, a tampered model) is an
:class:`EdgepureError`. The CLI prints these without a traceback and exits with status 1; anything else
is a bug and keeps its traceback. The module lives in the torch-free runtime so that every layer can
raise them; ``edgepure.EdgepureError`` is the same class.
"""

from __future__ import annotations

__all__ = [
    "EdgepureError",
    "DataError",
    "ImageDecodeError",
    "UnsafeFileError",
    "ModelError",
    "ConfigError",
    "MissingDependencyError",
    "PrecisionWarning",
]


class EdgepureError(Exception):
    """Base class of the errors meant for users: the message says what was expected and what was found."""


class DataError(EdgepureError):
    """A data set is missing, in the wrong layout, or holds values out of range."""


class ImageDecodeError(DataError):
    """An image file is unreadable: truncated, corrupt or in an unsupported format."""


class UnsafeFileError(DataError):
    """A file asks for something edgepure refuses to do with it (e.g. a pickle that wants to import code)."""


class ModelError(EdgepureError):
    """A model name, weight file or model directory is unknown, missing or does not match."""


class ConfigError(EdgepureError):
    """An option or argument has a value that cannot be used."""


class MissingDependencyError(EdgepureError):
    """An optional dependency is needed for this and is not installed."""

    def __init__(self, package: str, purpose: str, extra: str | None = None, hint: str | None = None,
                 message: str | None = None) -> None:
        if hint is None:
            hint = f"pip install 'edgepure[{extra}]'" if extra else f"pip install {package}"
        super().__init__(message or f"{purpose} needs the Python package '{package}', which is not installed: {hint}")
        self.package = package


class PrecisionWarning(UserWarning):
    """A model runs here at lower accuracy than it was calibrated for (e.g. INT8 on a CPU whose kernels saturate)."""
