"""Attack sanity and speed: every attack family against an undefended (or defended) classifier.

    python benchmarks/attacks.py --data PATH/TO/GTSRB [--n 512] [--steps 100] [--defense none] [--threads 2]
    python benchmarks/attacks.py --data synth --n 64 --steps 10          # smoke mode, no data needed

Prints the robust-accuracy table and the timing: seconds per attack, attacked images per second, and
classifier forward+backward passes per second (each APGD step is one forward and one backward per image
and EOT sample).
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from edgepure.data import dataset_kind, open_dataset
from edgepure.evaluate.report import format_table
from edgepure.evaluate.robust import benchmark
from edgepure.models.loading import resolve_classifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synth")
    ap.add_argument("--split", default="val")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--defense", default="none")
    ap.add_argument("--threat", default="blind")
    ap.add_argument("--attack", default="conv,patch,flow,additive,all")
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = resolve_classifier(args.model)
    data = open_dataset(args.data, args.split, n=args.n, seed=0)
    r = benchmark(
        model, data, None if args.defense == "none" else args.defense, args.attack.split(","), args.threat.split(","),
        steps=args.steps, batch_size=args.batch_size, dataset="cifar10" if dataset_kind(args.data) == "cifar10" else "gtsrb",
        progress=True,
    )
    print(format_table(r))
    timing = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__},
        "n": r["n"], "steps": args.steps, "seconds_total": r["seconds"], "seconds_per_attack": r["seconds_per_attack"],
        "attacked_images_per_second": r["images_per_second"],
        "fwd_bwd_passes_per_second": round(r["images_per_second"] * (args.steps + 1), 1),
    }
    print(json.dumps(timing, indent=2))


if __name__ == "__main__":
    main()
