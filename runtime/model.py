"""A model directory loaded for inference, torch-free: preprocessing in numpy, purify → classify, top-k.

    from edgepure.runtime.model import load_model
    model = load_model("models/median")                  # verifies every file's sha256
    preds = model.classify([frame_rgb_uint8], rois=[(x1, y1, x2, y2)])
    preds[0].label, preds[0].confidence, preds[0].topk

``mode="fused"`` runs the directory's ``pipeline`` graph (``classifier`` when it has no purifier);
``mode="split"`` runs ``purifier`` then ``classifier`` as two models (each stage timed on its own). A
stochastic purifier's noise input is fed from a seeded generator, so the same frames give the same answers.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from edgepure.runtime.backends import Backend, open_backend
from edgepure.runtime.errors import ConfigError, ModelError, PrecisionWarning
from edgepure.runtime.machine import int8_saturates
from edgepure.runtime.manifest import load_manifest
from edgepure.runtime.manifest_check import check_graph
from edgepure.runtime.preprocess import crop_roi, resize

__all__ = ["EdgeModel", "MODES", "Prediction", "load_model", "softmax"]

MODES = ("fused", "split")
_INPUT = "float32 RGB NCHW in [0, 1]"


@dataclass
class Prediction:
    label: int
    name: str
    confidence: float
    topk: list[tuple[int, str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "name": self.name, "confidence": round(self.confidence, 6),
                "topk": [[c, n, round(p, 6)] for c, n, p in self.topk]}


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    e = np.exp(z - z.max(axis=-1, keepdims=True), dtype=np.float64)
    e /= e.sum(axis=-1, keepdims=True)
    return e


class _Stage:
    """One graph on one backend, with its static batch and optional noise input."""

    def __init__(self, backend: Backend, role: str, directory: Path, manifest: dict[str, Any]) -> None:
        self.backend, self.role = backend, role
        # feeds built here match the specs by construction: backends may offer an unchecked entry point
        self._run = getattr(backend, "run_trusted", backend.run)
        check_graph(str(directory / manifest["models"][role]["file"]), role, manifest["models"][role],
                    backend.inputs, backend.outputs, manifest["class_names"], manifest.get("batch"))
        image = backend.inputs[0]
        self.input_name = image.name
        self.batch, _, self.height, self.width = image.shape
        self.noise = next((s for s in backend.inputs if s.name == "noise"), None)
        extra = [s.name for s in backend.inputs[1:] if s.name != "noise"]
        if self.noise is not None and self.noise.dtype != "float32":
            raise ModelError(f"{role}: the noise input is {self.noise.dtype}; this runtime feeds float32 noise")
        if extra:
            raise ModelError(f"{role}: unexpected inputs {extra} (expected the image and optionally 'noise')")

    def run(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = batch.shape[0]
        if n == self.batch:  # the camera loop's case: one call, no copies
            feed = {self.input_name: batch if batch.flags.c_contiguous else np.ascontiguousarray(batch)}
            if self.noise is not None:
                feed["noise"] = rng.standard_normal(self.noise.shape, dtype=np.float32)
            return self._run(feed)[0]
        pad = (-n) % self.batch
        if pad:
            batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
        out = []
        for s in range(0, batch.shape[0], self.batch):
            feed = {self.input_name: np.ascontiguousarray(batch[s : s + self.batch])}
            if self.noise is not None:
                feed["noise"] = rng.standard_normal(self.noise.shape, dtype=np.float32)
            out.append(self.backend.run(feed)[0])
        return np.concatenate(out)[:n]


def _saturation_message(directory: Path, manifest: dict[str, Any]) -> str:
    rep = (manifest.get("calibration") or {}).get("report") or {}
    measured = ""
    if "top1_agreement" in rep:
        how = "in Q/DQ arithmetic" if rep.get("arithmetic") == "qdq-exact" else "on the CPU it was calibrated on"
        measured = f" (calibration report: top-1 agreement with FP32 {rep['top1_agreement']:.3f} {how}"
        cpu = rep.get("onnxruntime_cpu") or {}
        measured += (f", {cpu['top1_agreement']:.3f} on the CPU it was calibrated on)" if "top1_agreement" in cpu
                     else ")")
    return (f"{directory}: INT8 model on ONNX Runtime's CPU, and this CPU has AVX2 but no VNNI: its INT8 kernels "
            f"saturate 16-bit sums of u8×s8 products, so answers can differ from the calibrated model's{measured}. "
            "On this CPU run the FP32 model directory; the INT8 one is for TensorRT, ARM and VNNI CPUs.")


class EdgeModel:
    """One exported model directory, ready to classify frames."""

    def __init__(self, directory: str | Path, backend: str = "ort-cpu", mode: Optional[str] = None,
                 threads: Optional[int] = None, seed: int = 0, role: Optional[str] = None) -> None:
        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        models = self.manifest["models"]
        if role is not None:  # a single graph by name ("classifier", "purifier", "pipeline")
            if role not in models:
                raise ModelError(f"{self.directory}: no {role} model (has {', '.join(models)})")
            roles = [role]
            mode = "fused"
        else:
            mode = mode or "fused"
            if mode not in MODES:
                raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
            if mode == "split" and "purifier" not in models:
                raise ConfigError(f"{self.directory}: mode 'split' needs a purifier model (has {', '.join(models)})")
            roles = ["purifier", "classifier"] if mode == "split" else (
                ["pipeline"] if "pipeline" in models else ["classifier"])
        self.mode, self.backend_name = mode, backend
        if (backend == "ort-cpu" and any(models[r].get("precision") == "int8" for r in roles)
                and int8_saturates()):  # the CPU flags are read only for INT8 graphs
            warnings.warn(_saturation_message(self.directory, self.manifest), PrecisionWarning, stacklevel=2)
        self.stages: list[_Stage] = []
        try:
            for r in roles:
                self.stages.append(_Stage(open_backend(backend, self.directory, r, self.manifest, threads), r,
                                          self.directory, self.manifest))
        except BaseException:
            self.close()
            raise
        if len(self.stages) == 2 and self.stages[0].backend.outputs[0].shape != self.stages[1].backend.inputs[0].shape:
            self.close()
            raise ModelError(f"{self.directory}: the purifier returns {list(self.stages[0].backend.outputs[0].shape)} "
                             f"images, the classifier takes {list(self.stages[1].backend.inputs[0].shape)}")
        first = self.stages[0]
        self.batch, self.height, self.width = first.batch, first.height, first.width
        self._check_preprocessing(self.manifest["preprocessing"])
        self.class_names: list[str] = list(self.manifest.get("class_names") or [])
        self.rng = np.random.default_rng(seed)
        self.last_timings: dict[str, float] = {}
        self.closed = False
        purifier = self.manifest.get("purifier") or {}
        self.purifier_name: Optional[str] = purifier.get("name")

    def _check_preprocessing(self, pre: Any) -> None:
        """The manifest's preprocessing must be what :meth:`preprocess` does (RGB in [0, 1] at the graph's size)."""
        where = self.directory / "manifest.json"
        if not isinstance(pre, dict):
            raise ModelError(f"{where}: 'preprocessing' must be an object, found {type(pre).__name__}")
        if pre.get("input", _INPUT) != _INPUT:
            raise ModelError(f"{where}: this runtime feeds {_INPUT!r}; the model expects {pre['input']!r}")
        size = pre.get("size")
        if size is not None and list(size) != [self.height, self.width]:
            raise ModelError(f"{where}: preprocessing size {list(size)} but the graph takes "
                             f"{self.height}×{self.width} images")

    @property
    def role(self) -> str:
        return "+".join(s.role for s in self.stages)

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
            frame = crop_roi(frame, (x1, y1, x2, y2))  # refuses an ROI that misses the frame
        img = frame if frame.shape[:2] == (self.height, self.width) else resize(frame, (self.height, self.width))
        out = img.transpose(2, 0, 1).astype(np.float32, order="C")  # a fresh C-contiguous copy
        out *= np.float32(1.0 / 255.0)
        return out

    # -- inference -------------------------------------------------------------------------------
    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits for ``N×3×h×w`` float32 in [0, 1]; any N (the static batch is filled and the padding dropped).

        The time each stage took is left in :attr:`last_timings` (milliseconds, by role).
        """
        if batch.ndim != 4 or batch.shape[1:] != (3, self.height, self.width):
            raise ConfigError(f"expected N×3×{self.height}×{self.width} images, got {list(batch.shape)}")
        if batch.dtype != np.float32:
            raise ConfigError(f"expected float32 images, got {batch.dtype}")
        if not np.isfinite(batch).all():
            raise ConfigError("input images contain NaN or infinity")
        return self.infer(batch)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`logits` without the checks, for batches this model preprocessed itself (finite by construction)."""
        if self.closed:
            raise ConfigError(f"{self!r} is closed: load the model again to classify more frames")
        timings = {}
        x = batch
        for stage in self.stages:
            t0 = time.perf_counter()
            x = stage.run(x, self.rng)
            timings[stage.role] = (time.perf_counter() - t0) * 1e3
        self.last_timings = timings
        return x

    def predict(self, x: np.ndarray, k: int = 3) -> list[Prediction]:
        """Top-k predictions for preprocessed ``N×3×h×w`` images."""
        _check_k(k)
        return self.decode(softmax(self.logits(x)), k)

    def decode(self, probs: np.ndarray, k: int = 3) -> list[Prediction]:
        """Top-k predictions from class probabilities ``N×C`` (all classes when ``k`` exceeds their count)."""
        _check_k(k)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k].tolist()
        values = probs.tolist()
        preds = []
        for row, p in zip(order, values):
            top = [(c, self.name(c), p[c]) for c in row]
            preds.append(Prediction(top[0][0], top[0][1], top[0][2], top))
        return preds

    def classify(self, frames: Sequence[np.ndarray], rois: Optional[Sequence[Optional[Sequence[float]]]] = None,
                 k: int = 3) -> list[Prediction]:
        """Top-k predictions for a list of RGB uint8 frames (each optionally with its ROI); an ``N×H×W×3``
        array is taken as N frames."""
        _check_k(k)
        if isinstance(frames, np.ndarray):
            if frames.ndim != 4:
                raise ConfigError(f"classify takes a list of H×W×3 frames or an N×H×W×3 array, got an array of "
                                  f"shape {list(frames.shape)}" + (": pass [frame] for one frame" if frames.ndim == 3
                                                                   else ""))
            frames = list(frames)
        if rois is not None and len(rois) != len(frames):
            raise ConfigError(f"{len(frames)} frames but {len(rois)} ROIs")
        if len(frames) == 0:
            return []
        if len(frames) == 1:  # the camera loop's case
            x = self.preprocess(frames[0], rois[0] if rois is not None else None)[None]
        else:
            x = np.stack([self.preprocess(f, rois[i] if rois is not None else None) for i, f in enumerate(frames)])
        return self.decode(softmax(self.infer(x)), k)  # uint8 frames: finite by construction

    def name(self, c: int) -> str:
        return self.class_names[c] if c < len(self.class_names) else str(c)

    def close(self) -> None:
        """Release the backends; the model refuses to run afterwards. Closing twice is harmless."""
        for s in self.stages:
            s.backend.close()
        self.closed = True

    def __repr__(self) -> str:
        return f"EdgeModel({str(self.directory)!r}, {self.role} on {self.backend_name})"


def _check_k(k: Any) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"top-k must be an integer ≥ 1, got {k!r}")


def load_model(directory: str | Path, **kw: Any) -> EdgeModel:
    """Load an exported model directory (see :class:`EdgeModel`)."""
    return EdgeModel(directory, **kw)
