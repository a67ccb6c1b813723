"""FP32 vs FP16 vs INT8: accuracy clean and under each blind attack, and ONNX Runtime CPU latency.

    python benchmarks/precision.py --data ../shared/data/gtsrb --n 512 --purifiers none,median \
        [--models runs/models/np-dist-8] [--cache runs/advcache] [--steps 100] [--out runs/precision]

For each purifier (``none`` = the classifier alone) it exports FP32 and FP16 model directories and
calibrates an INT8 one (512 training-split images, entropy, scope classifier); model directories given
with ``--models`` are calibrated (FP16 needs a re-export, so those get FP32 and INT8 only, plus INT8 with
``--scope forward`` when they have a purifier). Each directory is then scored by ONNX Runtime on the
track-validation split under the blind attacks (APGD on the PyTorch twin; ``--cache`` reuses them), and
timed with ``edgepure bench``. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

EDGEPURE = [sys.executable, "-m", "edgepure.cli.main"]


def sh(*args: str) -> str:
    print("+ edgepure", " ".join(args), flush=True)
    r = subprocess.run([*EDGEPURE, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{r.stderr[-3000:]}")
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--calib-n", type=int, default=512)
    ap.add_argument("--forward-n", type=int, default=64,
                    help="calibration images for the purifier's convolutions (calibrate --purifier-n)")
    ap.add_argument("--classifier", default=None,
                    help="registered classifier, checkpoint or ONNX file to export (default: the shipped default)")
    ap.add_argument("--purifiers", default="none,median")
    ap.add_argument("--models", nargs="*", type=Path, default=[])
    ap.add_argument("--attacks", default="conv,patch,flow,additive,all")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--cache", default="runs/advcache")
    ap.add_argument("--out", type=Path, default=Path("runs/precision"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    args.out.mkdir(parents=True, exist_ok=True)
    dirs: list[tuple[str, str, Path]] = []
    for p in [p for p in args.purifiers.split(",") if p]:
        for prec in ("fp32", "fp16"):
            d = args.out / f"{p}-{prec}"
            if not (d / "manifest.json").is_file():
                sh("export", "--out", str(d), "--precision", prec, "--data", args.data, "--force",
                   *(["--classifier", args.classifier] if args.classifier else []),
                   *(["--purifier", p] if p != "none" else []))
            dirs.append((p, prec, d))
    dirs += [(m.name, "fp32", m) for m in args.models]
    for name, prec, d in list(dirs):
        if prec != "fp32":
            continue
        scopes = ["classifier"] + (["forward"] if "purifier" in json.loads((d / "manifest.json").read_text())["models"]
                                   and name not in args.purifiers.split(",") else [])
        for scope in scopes:
            q = args.out / f"{name}-int8{'' if scope == 'classifier' else '-' + scope}"
            if not (q / "manifest.json").is_file():
                sh("calibrate", str(d), "--data", args.data, "--n", str(args.calib_n), "--eval-n", "0",
                   "--purifier-n", str(args.forward_n),
                   "--scope", scope, "--out", str(q), "--force")
            dirs.append((name, "int8" if scope == "classifier" else f"int8 ({scope})", q))
    rows: list[dict[str, Any]] = []
    for name, prec, d in dirs:
        res = json.loads(sh("eval", "robust", "--data", args.data, "--split", "val", "--n", str(args.n), "--model",
                            str(d), "--attack", args.attacks, "--threat", "blind", "--steps", str(args.steps),
                            "--cache", args.cache, "--json"))
        bench = json.loads(sh("bench", "--model", str(d), "--role", "pipeline" if name != "none" else "classifier",
                              "--threads", str(args.threads), "--iters", "50" if name in args.purifiers else "10",
                              "--warmup", "3", "--json"))
        rows.append({"pipeline": name, "precision": prec, "clean": res["clean_accuracy"],
                     "robust": {a: v["blind"] for a, v in res["robust_accuracy"].items()},
                     "latency_ms": bench["results"][0]["runtime_step"]["p50_ms"]})
        (args.out / "precision.json").write_text(json.dumps(rows, indent=2) + "\n")
    attacks = args.attacks.split(",")
    print(f"\n| pipeline | precision | clean | {' | '.join(attacks)} | ORT CPU ms |")
    print("|---|---|---:|" + "---:|" * len(attacks) + "---:|")
    for r in rows:
        cells = " | ".join(f"{100 * r['robust'][a]:.2f}" for a in attacks)
        print(f"| {r['pipeline']} | {r['precision']} | {100 * r['clean']:.2f} | {cells} | {r['latency_ms']:.2f} |")


if __name__ == "__main__":
    main()
