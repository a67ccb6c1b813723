"""``edgepure demo``: what edgepure is for, in one command.

1. export the shipped classifier alone and behind a purifier as static ONNX model directories;
2. render signs (or take real GTSRB validation images) and attack them with each perturbation family
   (blind APGD against the classifier: the attacker does not know the purifier);
3. run the torch-free runtime's camera loop over the clean and the attacked frames, with and without
   purification, and time it;
4. print clean / attacked / purified accuracy and latency, and write ``demo.json``, a figure
   (``demo.png``: examples and bars) and the overlay video of the purified stream (``demo.mp4``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from edgepure.runtime.errors import ConfigError

__all__ = ["run_demo"]

ATTACKS = ("conv", "patch", "flow", "additive")


def _images(data: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    from edgepure.data import open_dataset

    if data == "synth":
        ds = open_dataset("synth", "val", n=n, seed=seed)
        return ds.images, ds.labels, "rendered signs (synth)"
    ds = open_dataset(data, "val", n=n, seed=seed)
    return ds.images, ds.labels, f"GTSRB validation tracks ({data})"


def _stream(images: np.ndarray, labels: np.ndarray, directory: Path, outputs: Sequence[Any] = (),
            threads: Optional[int] = None) -> dict[str, Any]:
    from edgepure.runtime.stream import Runner, run_stream
    from edgepure.runtime.stream.sources import ArraySource

    runner = Runner.from_directory(directory, threads=threads)
    try:
        return run_stream(ArraySource(images, labels), runner, outputs)
    finally:
        runner.close()


def _figure(path: Path, examples: dict[str, tuple[np.ndarray, np.ndarray]], rows: list[dict[str, Any]],
            purifier: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = list(examples)
    fig = Figure(figsize=(2.0 * len(cols) + 5.5, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, len(cols) + 3)
    for j, name in enumerate(cols):
        for i, img in enumerate(examples[name]):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
        if j == 0:
            fig.axes[-2].set_ylabel("input", fontsize=9)
            fig.axes[-1].set_ylabel(f"purified ({purifier})", fontsize=9)
    ax = fig.add_subplot(grid[:, len(cols):])
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [100 * r["no_defense"] for r in rows], 0.4, label="no defense", color="#c44e52")
    ax.bar(x + 0.2, [100 * r["purified"] for r in rows], 0.4, label=f"purified ({purifier})", color="#4c72b0")
    ax.set_xticks(x, [r["attack"] for r in rows], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("exported pipelines in the torch-free runtime", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def run_demo(out: str | Path = "runs/demo", data: str = "synth", n: int = 64, purifier: str = "median",
             purifier_args: Optional[dict[str, Any]] = None, attacks: Sequence[str] = ATTACKS, steps: int = 20,
             seed: int = 0, threads: Optional[int] = None, video: bool = True,
             progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Run the demo into ``out``; return the summary (also written to ``out/demo.json``)."""
    import torch

    import edgepure
    from edgepure.attacks.frames import frame_attack
    from edgepure.export.pipeline import export_pipeline

    unknown = [a for a in attacks if a not in (*ATTACKS, "all")]
    if unknown or not attacks:
        raise ConfigError(f"attacks must be among {', '.join((*ATTACKS, 'all'))}, got {list(attacks)}")
    if n < 1 or steps < 1:
        raise ConfigError(f"--n and --steps must be ≥ 1, got {n} and {steps}")
    say = progress or (lambda m: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    images, labels, described = _images(data, n, seed)
    clf = edgepure.load_classifier()
    pur = edgepure.create_purifier(purifier, **(purifier_args or {}))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).numpy()
    names, info = clf.pretrained_cfg["class_names"], {"name": clf.edgepure_name}
    dirs = {"no_defense": out / "models" / "classifier", "purified": out / "models" / purifier}
    say(f"exporting the classifier and the {purifier} pipeline to {out / 'models'}")
    export_pipeline(None, clf, dirs["no_defense"], x[:16], class_names=names, classifier_info=info, overwrite=True)
    export_pipeline(pur, clf, dirs["purified"], x[:16], class_names=names, classifier_info=info,
                    purifier_info={"name": purifier, "config": pur.config()}, overwrite=True)
    frames = {"clean": images}
    for a in attacks:
        say(f"attacking {n} images with {a} (blind APGD-{steps} on the classifier)")
        frames[a] = frame_attack(a, clf, steps=steps, seed=seed)(images, labels)
    rows, latency = [], {}
    for name, imgs in frames.items():
        say(f"runtime over the {name} frames, with and without purification")
        res = {k: _stream(imgs, labels, d, threads=threads) for k, d in dirs.items()}
        rows.append({"attack": name, "no_defense": res["no_defense"]["accuracy"],
                     "purified": res["purified"]["accuracy"]})
        for k, r in res.items():
            latency.setdefault(k, []).append(r["latency_ms"]["total"]["p50_ms"])
    files = {"json": str(out / "demo.json"), "figure": str(out / "demo.png")}
    if video:
        from edgepure.runtime.stream.outputs import VideoOutput

        say("writing the overlay video of the purified stream")
        seq = np.concatenate([np.repeat(imgs[: min(12, n)], 4, axis=0) for imgs in frames.values()])
        seq_labels = np.concatenate([np.repeat(labels[: min(12, n)], 4) for _ in frames])
        _stream(seq, seq_labels, dirs["purified"], [VideoOutput(out / "demo.mp4", fps=8)], threads=threads)
        files["video"] = str(out / "demo.mp4")
    with torch.no_grad():
        shown = {k: v[:2] for k, v in frames.items()}
        purified = {k: (pur(torch.from_numpy(v).permute(0, 3, 1, 2).float().div(255)).clamp(0, 1) * 255)
                    .round().byte().permute(0, 2, 3, 1).numpy() for k, v in shown.items()}
    _figure(out / "demo.png", {k: (shown[k][0], purified[k][0]) for k in shown}, rows, purifier)
    summary = {"data": described, "n": int(n), "purifier": purifier, "purifier_config": pur.config(),
               "attack": f"blind APGD-{steps} per family (conv = blur kernel, patch = occlusion, flow = "
                         "distortion, additive = noise) on the classifier",
               "accuracy": rows,
               "latency_ms_p50": {k: round(float(np.median(v)), 3) for k, v in latency.items()},
               "seconds": round(time.perf_counter() - t0, 1), "files": files}
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
