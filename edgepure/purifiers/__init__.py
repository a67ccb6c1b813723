"""Purifiers: ``nn.Module``s mapping [0, 1] images to [0, 1] images, randomness from explicit noise inputs."""

from edgepure.purifiers.base import Purifier
from edgepure.purifiers.registry import create_purifier, list_purifiers, register_purifier

__all__ = ["Purifier", "create_purifier", "list_purifiers", "register_purifier"]
