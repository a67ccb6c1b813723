"""Errors of the export step."""

from edgepure.runtime.errors import EdgepureError

__all__ = ["ExportError", "ParityError"]


class ExportError(EdgepureError):
    """A model could not be exported, or the exported graph failed its checks."""


class ParityError(ExportError):
    """The exported graph does not reproduce PyTorch within the tolerance; nothing was written."""
