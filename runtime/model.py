"""A model directory loaded for inference, torch-free: preprocessing in numpy, purify → classify, top-k.

    from edgepure.runtime.model import load_model
    model = load_model("models/median")                  # verifies every file's sha256
    preds = model.classify([frame_rgb_uint8], rois=[(x1, y1, x2, y2)])
    preds[0].label, preds[0].confidence, preds[0].topk

The fused ``pipeline.onnx`` runs when the directory has one (``classifier.onnx`` otherwise); a stochastic
purifier's noise input is fed from a seeded generator, so the same frames give the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from edgepure.runtime.backends import ort_session
from edgepure.runtime.errors import ConfigError, ModelError
from edgepure.runtime.manifest import load_manifest
from edgepure.runtime.preprocess import crop_roi, resize

__all__ = ["EdgeModel", "Prediction", "load_model"]


@dataclass
class Prediction:
    label: int
    name: str
    confidence: float
    topk: list[tuple[int, str, float]] = field(default_factory=list)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class EdgeModel:
    """One exported model directory, ready to classify frames."""

    def __init__(self, directory: str | Path, role: Optional[str] = None, threads: Optional[int] = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",), seed: int = 0) -> None:
        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        models = self.manifest["models"]
        self.role = role or ("pipeline" if "pipeline" in models else "classifier")
        if self.role not in models:
            raise ModelError(f"{self.directory}: no {self.role} model (has {', '.join(models)})")
        entry = models[self.role]
        self.session = ort_session(self.directory / entry["file"], providers=providers, threads=threads)
        image = entry["inputs"][0]
        self.input_name = image["name"]
        self.batch, _, self.height, self.width = (int(d) for d in image["shape"])
        self.noise = next((i for i in entry["inputs"] if i["name"] == "noise"), None)
        self.class_names: list[str] = list(self.manifest.get("class_names") or [])
        self.rng = np.random.default_rng(seed)

    # -- preprocessing -------------------------------------------------------------------------
    def preprocess(self, frame: np.ndarray, roi: Optional[Sequence[float]] = None) -> np.ndarray:
        """``H×W×3`` uint8 RGB (optionally cropped to ``roi = (x1, y1, x2, y2)``) → ``3×h×w`` float32 in [0, 1]."""
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
            shape = getattr(frame, "shape", None)
            raise ConfigError(f"expected an H×W×3 RGB frame, got {shape if shape is not None else type(frame).__name__}")
        if frame.dtype != np.uint8:
            raise ConfigError(f"expected a uint8 frame, got {frame.dtype}")
        if roi is not None:
            x1, y1, x2, y2 = roi
            if not (x2 > x1 and y2 > y1):
                raise ConfigError(f"ROI {tuple(roi)} is empty (expected x1 < x2 and y1 < y2)")
            frame = crop_roi(frame, (x1, y1, x2, y2))
        img = resize(frame, (self.height, self.width))
        return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)

    # -- inference -------------------------------------------------------------------------------
    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits for ``N×3×h×w`` float32 in [0, 1]; any N (the static batch is filled and the padding dropped)."""
        if batch.ndim != 4 or batch.shape[1:] != (3, self.height, self.width):
            raise ConfigError(f"expected N×3×{self.height}×{self.width} images, got {batch.shape}")
        if not np.isfinite(batch).all():
            raise ConfigError("input images contain NaN or infinity")
        n = batch.shape[0]
        pad = (-n) % self.batch
        if pad:
            batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
        out = []
        for s in range(0, batch.shape[0], self.batch):
            feed: dict[str, Any] = {self.input_name: batch[s : s + self.batch]}
            if self.noise is not None:
                feed["noise"] = self.rng.standard_normal([int(d) for d in self.noise["shape"]], dtype=np.float32)
            out.append(self.session.run(None, feed)[0])
        return np.concatenate(out)[:n]

    def classify(self, frames: Sequence[np.ndarray], rois: Optional[Sequence[Optional[Sequence[float]]]] = None,
                 k: int = 3) -> list[Prediction]:
        """Top-k predictions for a list of RGB uint8 frames (each optionally with its ROI)."""
        if rois is not None and len(rois) != len(frames):
            raise ConfigError(f"{len(frames)} frames but {len(rois)} ROIs")
        if not frames:
            return []
        x = np.stack([self.preprocess(f, rois[i] if rois is not None else None) for i, f in enumerate(frames)])
        probs = _softmax(self.logits(x).astype(np.float64))
        preds = []
        for p in probs:
            order = np.argsort(-p)[:k]
            top = [(int(c), self._name(int(c)), float(p[c])) for c in order]
            preds.append(Prediction(top[0][0], top[0][1], top[0][2], top))
        return preds

    def _name(self, c: int) -> str:
        return self.class_names[c] if c < len(self.class_names) else str(c)


def load_model(directory: str | Path, **kw: Any) -> EdgeModel:
    """Load an exported model directory (see :class:`EdgeModel`)."""
    return EdgeModel(directory, **kw)
