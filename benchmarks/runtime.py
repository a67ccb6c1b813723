"""The torch-free runtime on the CPU: crops/s per pipeline and the runtime's overhead over ``session.run``.

    python benchmarks/runtime.py [--models DIR ...] [--purifiers none,gaussian,median,bitdepth]
                                 [--batches 1,32] [--threads 1] [--iters 200] [--out runs/runtime-bench.json]

Without ``--models`` it exports the classifier alone and each baseline pipeline (``--purifiers``) into a
temporary folder first (PyTorch needed for that step only); model directories or variant sets given
with ``--models`` are timed as they are. Prints a Markdown table and writes the JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def export_baselines(root: Path, purifiers: list[str]) -> list[Path]:
    import edgepure
    from edgepure.data import open_dataset
    from edgepure.export.pipeline import export_pipeline

    images = open_dataset("synth", "val", n=8).as_float_nchw()
    clf = edgepure.load_classifier()
    out = []
    for name in purifiers:
        d = root / name
        pur = None if name == "none" else edgepure.create_purifier(name)
        export_pipeline(pur, clf, d, images, class_names=clf.pretrained_cfg["class_names"],
                        classifier_info={"name": clf.edgepure_name})
        out.append(d)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", type=Path, default=[])
    ap.add_argument("--purifiers", default="none,gaussian,median,bitdepth")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("runs/runtime-bench.json"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from edgepure.runtime.bench import bench_directory

    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        dirs = list(args.models) or export_baselines(Path(tmp), args.purifiers.split(","))
        rows: list[dict[str, Any]] = []
        for d in dirs:
            rep = bench_directory(d, ["ort-cpu"], batches, warmup=args.warmup, iters=args.iters, threads=args.threads,
                                  progress=lambda m: print(f"timing {m} …", flush=True))
            for r in rep["results"]:
                if r["role"] == "classifier" and any(x["role"] == "classifier" and x["batch"] == r["batch"]
                                                     for x in rows):
                    continue  # the classifier is the same in every directory: time it once
                rows.append({"model": d.name, **r})
    report = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
              "threads": args.threads, "iters": args.iters, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['machine']['cpu']}, {args.threads} thread(s), ONNX Runtime CPU, {args.iters} timed calls\n")
    print("| model | variant | graph | batch | session.run p50 ms | runtime step p50 ms | p95 | p99 | crops/s "
          "| inference overhead | step overhead |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        s = r["runtime_step"]
        print(f"| {r['model']} | {r['variant']} | {r['role']} | {r['batch']} | {r['bare']['p50_ms']:.3f} | "
              f"{s['p50_ms']:.3f} | {s['p95_ms']:.3f} | {s['p99_ms']:.3f} | {r['throughput_per_s']:.1f} | "
              f"{100 * r['overhead_infer']:+.1f} % | {100 * r['overhead_step']:+.1f} % |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
