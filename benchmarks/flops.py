"""FLOPs per crop of each exported pipeline, its measured speed, and the fraction of this machine's peak.

    python benchmarks/flops.py --models models/median models/np-add [--threads 1] [--iters 50] [--out runs/flops.json]

FLOPs count Conv, ConvTranspose, Gemm and MatMul (2 per multiply-accumulate; see edgepure/export/flops.py).
The peak is measured here: the best float32 matrix product (numpy, the same thread count) over a few sizes.
Each pipeline is timed with the runtime's full step (edgepure.runtime.bench), batch 1.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path("runs/flops.json"))
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    import onnx

    from edgepure.export.flops import count_macs
    from edgepure.runtime.bench import bench_directory
    from edgepure.runtime.machine import describe_machine, matmul_peak_gflops
    from edgepure.runtime.manifest import load_manifest
    from edgepure.runtime.variants import list_variants

    peak = {"gflops": matmul_peak_gflops()}
    rows = []
    for d in args.models:
        for v in list_variants(d):
            models = load_manifest(v.path)["models"]
            role = "pipeline" if "pipeline" in models else "classifier"
            macs = count_macs(onnx.load(str(v.path / models[role]["file"])))
            rep = bench_directory(v.path, batches=[1], warmup=3, iters=args.iters, threads=args.threads, roles=[role])
            ms = rep["results"][0]["runtime_step"]["p50_ms"]
            gflops = 2 * macs["macs"] / (ms / 1e3) / 1e9
            rows.append({"model": f"{d.name}/{v.name}" if v.path != d else d.name, "graph": role,
                         "mflops_per_crop": round(2 * macs["macs"] / 1e6, 1), "by_op_mmacs":
                         {k: round(x / 1e6, 2) for k, x in macs["by_op"].items()}, "p50_ms": ms,
                         "gflops_achieved": round(gflops, 2), "fraction_of_peak": round(gflops / peak["gflops"], 3)})
    report = {"machine": describe_machine(), "threads": args.threads, "peak": peak, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"measured peak (float32 matrix product, {args.threads} thread): {peak['gflops']} GFLOP/s\n")
    print("| pipeline | graph | MFLOPs / crop | p50 ms | GFLOP/s | of peak |\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['graph']} | {r['mflops_per_crop']:.1f} | {r['p50_ms']:.3f} | "
              f"{r['gflops_achieved']:.1f} | {100 * r['fraction_of_peak']:.0f} % |")


if __name__ == "__main__":
    main()
