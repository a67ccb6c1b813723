"""Measure a classifier: track-split validation accuracy, accuracy on synthetic renders, CPU latency.

    python benchmarks/classifier.py [--model NAME|RUN_DIR] [--data PATH/TO/GTSRB] [--synth-n 4300] [--threads 2]

Prints one JSON object. Latency is torch eager on the CPU, median of repeated runs after warm-up, for
batch 1 and batch 32, with the thread count stated.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from edgepure.data import open_dataset
from edgepure.evaluate.clean import evaluate_clean
from edgepure.models.loading import resolve_classifier


def latency_ms(model: torch.nn.Module, batch: int, repeats: int = 50) -> dict[str, float]:
    x = torch.rand(batch, 3, 32, 32)
    with torch.inference_mode():
        for _ in range(10):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 3), "p90_ms": round(times[int(0.9 * len(times))], 3),
            "images_per_s": round(batch * 1e3 / statistics.median(times), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="registered name with shipped weights, or a checkpoint/run folder")
    ap.add_argument("--data", default=None, help="GTSRB path for the track-split validation (skipped if absent)")
    ap.add_argument("--synth-n", type=int, default=4300, help="synthetic renders to evaluate (test seeds)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = resolve_classifier(args.model).eval()
    out: dict[str, object] = {
        "model": args.model or "signnet_s (shipped)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__},
    }
    if args.data and Path(args.data).exists():
        val = open_dataset(args.data, "val")
        m = evaluate_clean(model, val)
        out["gtsrb_val"] = {"accuracy": m["accuracy"], "n": m["n"], "errors": m["errors"]}
    synth = open_dataset("synth", "test", n=args.synth_n)
    m = evaluate_clean(model, synth)
    worst = sorted(m["per_class_accuracy"].items(), key=lambda kv: kv[1])[:5]
    out["synthetic_test"] = {"accuracy": m["accuracy"], "n": m["n"], "worst_classes": dict(worst)}
    out["latency_cpu_eager"] = {"batch1": latency_ms(model, 1), "batch32": latency_ms(model, 32)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
