"""Copy a trained classifier, image prior, blind-spot or IMPure network into the package: weights (safetensors) + the JSON beside them.

    python tools/ship_weights.py RUN_DIR --tag signnet_s_gtsrb --command "edgepure train classifier ..." \
        [--metrics bench.json]
    python tools/ship_weights.py RUN_DIR --tag edm_unet_s_gtsrb --command "edgepure train prior ..."
    python tools/ship_weights.py RUN_DIR --tag bsn_s_gtsrb --command "edgepure train blindspot ..."

The JSON records the architecture and its arguments, preprocessing (and class names for a classifier),
the training command and configuration, per-epoch history, the measured metrics, the sha256 of the
weights and the versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import torch

import edgepure
from edgepure.runtime.manifest import make_public

WEIGHTS = Path(__file__).resolve().parents[1] / "edgepure" / "models" / "weights"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--command", required=True, help="the exact training command")
    ap.add_argument("--metrics", type=Path, help="JSON printed by benchmarks/classifier.py")
    ap.add_argument("--checkpoint", default="best",
                    help="which checkpoint of the run: best (the validation score's pick) or last_ema / last")
    ap.add_argument("--name", default=None,
                    help="the registered name the weights ship under, when it is not the run's --model (the same "
                         "architecture registered again for a second set of weights, e.g. signnet_s_cutmix)")
    ap.add_argument("--float16", action="store_true",
                    help="store floating-point tensors as float16 (half the size; loaded into float32 parameters)")
    args = ap.parse_args()
    record = json.loads((args.run / f"{args.checkpoint}.json").read_text())
    if args.name is not None:
        record["name"] = args.name
    src = args.run / f"{args.checkpoint}.safetensors"
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    dest = WEIGHTS / f"{args.tag}.safetensors"
    if args.float16:
        from safetensors.torch import load_file, save_file

        save_file({k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(src)).items()}, str(dest))
        make_public(dest)  # safetensors creates its files 0600
    else:
        shutil.copyfile(src, dest)
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    if record.get("kind") == "prior":
        meta: dict = {
            "name": record["name"],
            "kind": "prior",
            "config": record.get("model_config", {}),
            "dataset": "GTSRB (training split of the track split; validation tracks held out)",
            "preprocessing": {
                "input": "float32 RGB NCHW in [-1, 1] (EDM convention, sigma_data 0.5) and sigma of shape (N,)",
                "size": [record["input_size"], record["input_size"]],
            },
        }
    elif record.get("kind") in ("blindspot", "impure"):
        meta = {
            "name": record["name"],
            "kind": "prior",
            "role": {"blindspot": "blind-spot network (NCIS)", "impure": "masked-view reconstruction (IMPure)"}[record["kind"]],
            "config": record.get("model_config", {}),
            "dataset": "GTSRB (training split of the track split; validation tracks held out)",
            "preprocessing": {"input": "float32 RGB NCHW in [0, 1]", "size": [record["input_size"], record["input_size"]]},
        }
    else:
        meta = {"name": record["name"], "kind": "classifier", "config": record.get("model_config", {}),
                "dataset": "GTSRB", "class_names": record["class_names"]}
        meta["preprocessing"] = {
            "input": "float32 RGB NCHW in [0, 1]",
            "size": [record["input_size"], record["input_size"]],
            "resize": "antialiased bilinear (triangle filter) of the whole frame",
            "roi_crop": False,
            "normalisation": "inside the model (mean/std buffers)",
        }
    meta.update({
        "training": {
            "command": args.command,
            "config": record["config"],
            "checkpoint": args.checkpoint,
            "best_epoch": record["epoch"],
            "history": record["history"],
        },
        "metrics": json.loads(args.metrics.read_text()) if args.metrics else {},
        "sha256": digest,
        "versions": {"edgepure": edgepure.__version__, "torch": torch.__version__},
    })
    (WEIGHTS / f"{args.tag}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"shipped {dest} ({dest.stat().st_size / 1e6:.2f} MB, sha256 {digest[:16]}…)")


if __name__ == "__main__":
    main()
