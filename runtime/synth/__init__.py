"""The synthetic traffic-sign source: procedurally rendered signs for all 43 GTSRB classes (numpy only)."""

from edgepure.runtime.synth.render import render_dataset, render_sign

__all__ = ["render_dataset", "render_sign"]
