"""Evaluating an exported model directory: attack its PyTorch twin, score every image with the ONNX graph.

The published robustness is then the robustness of what ships: the attacks are computed on the twin
(rebuilt from the manifest: the same classifier weights and purifier settings), and the predictions come
from ONNX Runtime running ``pipeline.onnx`` (``classifier.onnx`` when there is no purifier), with the
same noise the twin would draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from edgepure.runtime.backends import ort_session
from edgepure.runtime.errors import ModelError
from edgepure.runtime.manifest import load_manifest

__all__ = ["OnnxScorer", "load_twin"]


class OnnxScorer:
    """Predictions of an exported model directory for float NCHW batches of any size (the graph's static
    batch is filled by repeating the last image, and the padding dropped)."""

    def __init__(self, directory: str | Path, purifier: Optional[nn.Module] = None, threads: Optional[int] = None) -> None:
        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        role = "pipeline" if "pipeline" in self.manifest["models"] else "classifier"
        self.entry = self.manifest["models"][role]
        self.session = ort_session(self.directory / self.entry["file"], threads=threads)
        self.batch = int(self.entry["inputs"][0]["shape"][0])
        self.noise_input = any(i["name"] == "noise" for i in self.entry["inputs"])
        self.purifier = purifier
        if self.noise_input and purifier is None:
            raise ModelError(f"{self.directory}: the graph takes a noise input; give the purifier that draws it")

    def __call__(self, x: torch.Tensor, seed: int) -> np.ndarray:
        n = x.shape[0]
        pad = (-n) % self.batch
        xs = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])]) if pad else x
        noise = None
        if self.noise_input:
            assert self.purifier is not None
            noise = self.purifier.sample_noise(x, torch.Generator().manual_seed(seed))
            if pad:
                noise = torch.cat([noise, noise[-1:].expand(pad, *noise.shape[1:])])
        preds = []
        for s in range(0, xs.shape[0], self.batch):
            feed = {"image": xs[s : s + self.batch].numpy().astype(np.float32)}
            if noise is not None:
                feed["noise"] = noise[s : s + self.batch].numpy().astype(np.float32)
            preds.append(self.session.run(None, feed)[0].argmax(-1))
        return np.concatenate(preds)[:n]


def load_twin(manifest: dict[str, Any]) -> tuple[nn.Module, Optional[nn.Module]]:
    """Rebuild the PyTorch classifier and purifier an exported directory was made from."""
    from edgepure.models.loading import load_classifier_source
    from edgepure.purifiers import create_purifier

    info = manifest.get("classifier") or {}
    source = info.get("source")
    if not source:
        raise ModelError("the manifest does not say which classifier it was exported from")
    if info.get("format") == "onnx":
        raise ModelError(f"the classifier was given as ONNX ({source}): the attacks need a PyTorch twin to "
                         "differentiate; export from the PyTorch classifier to evaluate robustness")
    classifier, _ = load_classifier_source(source)
    pinfo = manifest.get("purifier")
    purifier = create_purifier(pinfo["name"], **pinfo.get("config", {})) if pinfo else None
    return classifier, purifier
