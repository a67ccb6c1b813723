"""Clean accuracy of a classifier on an image set."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from edgepure.data.base import ImageSet

__all__ = ["evaluate_clean", "predict"]


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Logits for ``N×H×W×3`` uint8 images (float32, N×classes)."""
    model.eval()
    out = []
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="classify", unit="batch", leave=False)
    for s in starts:
        x = torch.from_numpy(np.ascontiguousarray(images[s : s + batch_size])).permute(0, 3, 1, 2).float() / 255.0
        out.append(model(x).float().numpy())
    n_cls = getattr(model, "num_classes", None) or 0
    return np.concatenate(out) if out else np.zeros((0, n_cls), np.float32)


def evaluate_clean(model: nn.Module, data: ImageSet, batch_size: int = 256, progress: bool = False) -> dict[str, Any]:
    """Top-1 accuracy, count and per-class accuracy of ``model`` on ``data``."""
    logits = predict(model, data.images, batch_size, progress)
    pred = logits.argmax(1)
    correct = pred == data.labels
    per_class = {}
    for c in np.unique(data.labels):
        m = data.labels == c
        per_class[data.class_names[int(c)]] = float(correct[m].mean())
    top5 = np.argsort(-logits, axis=1)[:, :5]
    return {
        "accuracy": float(correct.mean()) if len(correct) else float("nan"),
        "top5_accuracy": float((top5 == data.labels[:, None]).any(1).mean()) if len(correct) else float("nan"),
        "n": int(len(correct)),
        "errors": int((~correct).sum()),
        "per_class_accuracy": per_class,
    }
