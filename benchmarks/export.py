"""Exported graphs against PyTorch: parity, node count, file size, and CPU latency (ORT vs torch eager).

    python benchmarks/export.py [--classifier signnet_s] [--purifiers none,gaussian,median,bitdepth]
                                [--batches 1,32] [--threads 2] [--out runs/export-bench]

For each purifier (``none`` = the classifier alone) it exports the pipeline at every batch size, then
times ``session.run`` against the eager PyTorch module with the same thread count (median of repeated runs
after warm-up) and prints one JSON object and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import edgepure
from edgepure.data import open_dataset
from edgepure.export.pipeline import export_pipeline
from edgepure.export.voting import pipeline_module
from edgepure.runtime.backends import ort_session


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifier", default="signnet_s")
    ap.add_argument("--purifiers", default="none,gaussian,median,bitdepth")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path("runs/export-bench"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    classifier = edgepure.load_classifier(args.classifier)
    images = open_dataset("synth", "val", n=64).as_float_nchw()
    rows: list[dict[str, Any]] = []
    for name in args.purifiers.split(","):
        purifier = None if name == "none" else edgepure.create_purifier(name)
        for b in (int(v) for v in args.batches.split(",")):
            out = args.out / f"{name}-b{b}"
            m = export_pipeline(purifier, classifier, out, images, batch=b, overwrite=True,
                                purifier_info={"name": name, "config": purifier.config()} if purifier else None)
            role = "pipeline" if purifier is not None else "classifier"
            entry = m["models"][role]
            sess = ort_session(out / entry["file"], threads=args.threads)
            x = images[:b] if b <= len(images) else np.repeat(images, -(-b // len(images)), 0)[:b]
            feed = {"image": x}
            module = pipeline_module(purifier, classifier).eval() if purifier is not None else classifier
            xt = torch.from_numpy(x)
            with torch.inference_mode():
                eager = median_ms(lambda: module(xt), args.repeats)
            ort_ms = median_ms(lambda: sess.run(None, feed), args.repeats)
            rows.append({"purifier": name, "batch": b, "nodes": entry["nodes"], "mb": round(entry["bytes"] / 1e6, 3),
                         "max_abs_diff": entry["parity"]["max_abs_diff"],
                         "top1_agreement": entry["parity"].get("top1_agreement"),
                         "lint_errors": entry["lint"]["errors"],
                         "torch_ms": round(eager, 3), "ort_ms": round(ort_ms, 3),
                         "ort_speedup": round(eager / ort_ms, 2), "ort_crops_per_s": round(b * 1e3 / ort_ms, 1)})
    print(json.dumps({"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                                  "torch": torch.__version__}, "rows": rows}, indent=2))
    print("\n| purifier | batch | nodes | MB | max abs Δ | top-1 agree | lint errors | torch ms | ORT ms | ORT crops/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['purifier']} | {r['batch']} | {r['nodes']} | {r['mb']} | {r['max_abs_diff']:.1e} | "
              f"{r['top1_agreement']} | {r['lint_errors']} | {r['torch_ms']} | {r['ort_ms']} | {r['ort_crops_per_s']} |")


if __name__ == "__main__":
    main()
