"""NAPPure under blind attacks: robust and clean accuracy per purifier setting, and latency against K.

    # tune on held-out tracks that are NOT among the 512 evaluation images
    python benchmarks/nappure.py --data PATH/TO/GTSRB --images tune --n 96 --kind distortion --steps 8 \\
        --set lr_theta='{"flow": 0.3}' --cache runs/advcache
    # latency per image against K (torch CPU)
    python benchmarks/nappure.py --latency --steps 4,8,16,32 --threads 2
    # the prior's denoising jump alone (no steps) at several σ, on the occlusion purifier's attack
    python benchmarks/nappure.py --data PATH/TO/GTSRB --images tune --kind occlusion --jump 0.03,0.1 \\
        --prior edm_unet_s_restore --cache runs/advcache
    # blind attacks of three methods and the per-image worst of them (the jump, or a purifier with --steps)
    python benchmarks/nappure.py --data PATH/TO/GTSRB --images eval --kind additive --jump 0.02 \\
        --prior edm_unet_s_guided --blind-methods apgd:100,pgd:40,pgd:4 --cache runs/advcache
    # the flow warp's one-hot sampler against F.grid_sample, alternating in one process
    python benchmarks/nappure.py --warp-ab --kind joint --steps 8 --batch 1 --repeat 14 --threads 1

The blind adversarial examples (APGD-CE on the classifier alone, the protocol of ``edgepure eval robust``)
are computed once per image set and kept in ``--cache``. ``--images eval`` is the evaluation set of
``edgepure eval robust --n 512 --seed 0``; ``--images tune`` draws ``--n`` other images of the same split.
Each kind is scored on its matching attack (blur → conv, occlusion → patch, distortion → flow, additive →
additive, joint → every attack) and on clean images. Prints one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

MATCH = {"blur": ["conv"], "occlusion": ["patch"], "distortion": ["flow"], "additive": ["additive"],
         "joint": ["conv", "patch", "flow", "additive", "all"]}


def _images(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from edgepure.data import open_dataset

    full = open_dataset(args.data, "val", size=32)
    if args.images == "eval":
        return full.sample(512, 0)
    taken = set(np.sort(np.random.default_rng(0).choice(len(full), size=512, replace=False)).tolist())
    rest = np.array([i for i in range(len(full)) if i not in taken])
    pick = np.sort(np.random.default_rng(args.tune_seed).choice(rest, size=args.n, replace=False))
    return full.take(pick)


def _latency(args: argparse.Namespace) -> None:
    from edgepure.purifiers import create_purifier

    x = torch.rand(args.batch, 3, 32, 32)
    for k in [int(s) for s in (args.steps or "4,8,16,32").split(",")]:
        for grad in ("full", "forward"):
            pur = create_purifier("nappure", kind=args.kind, steps=k, prior_grad=grad)
            nz = pur.sample_noise(x, torch.Generator().manual_seed(0))
            pur(x, nz)
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                pur(x, nz)
                times.append(time.perf_counter() - t)
            ms = 1000 * float(np.median(times)) / args.batch
            print(json.dumps({"kind": args.kind, "steps": k, "prior_grad": grad, "batch": args.batch,
                              "ms_per_image": round(ms, 2), "threads": args.threads, "cpu": platform.processor()}))


def _jump_purifier(prior: torch.nn.Module, sigma: float):  # type: ignore[no-untyped-def]
    """The prior's single denoising jump as a purifier, x ↦ D(2x − 1 + σn; σ) (n from a fixed seed)."""
    from edgepure.purifiers.base import Purifier

    class Jump(Purifier):
        def __init__(self) -> None:
            super().__init__()
            self.prior, self.sigma = prior, sigma

        def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
            n = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                y = self.prior(2 * x - 1 + self.sigma * n, torch.full((len(x),), self.sigma))
            return ((y + 1) / 2).clamp(0, 1)

        def config(self) -> dict:
            return {"jump_sigma": self.sigma}

    return Jump()


def _blind_worst(args: argparse.Namespace, classifier, data, pur, attacks) -> dict:  # type: ignore[no-untyped-def]
    """Clean accuracy and, per attack, the blind robust accuracy under each of ``--blind-methods`` (method:steps) and
    the per-image worst of them: an image counts only if the pipeline reads it correctly clean and under every method.
    The examples are ``eval robust``'s (same keys, batches and seeds; cached in ``--cache``); the pipeline's noise is
    seeded per batch as in ``eval robust``, so each method's number equals its ``eval robust --method M --steps S``."""
    from edgepure.evaluate.robust import _defended_predict, blind_examples, parse_attack_methods

    x = torch.from_numpy(data.as_float_nchw())
    y = torch.from_numpy(data.labels)

    def right(images: torch.Tensor) -> np.ndarray:
        return np.concatenate([_defended_predict(classifier, pur, images[s : s + 128], s)[0]
                               for s in range(0, len(images), 128)]) == data.labels

    methods = parse_attack_methods(args.blind_methods)
    clean = right(x)
    out: dict = {"clean": round(float(clean.mean()), 4)}
    for attack in attacks:
        worst, row = clean.copy(), {}
        for method, steps in methods:
            ok = right(blind_examples(classifier, x, y, attack, steps, 0, args.cache, method=method)) & clean
            row[f"{method}:{steps}"] = round(float(ok.mean()), 4)
            worst &= ok
        out[attack] = {**row, "worst": round(float(worst.mean()), 4)}
    return out


def _jump(args: argparse.Namespace) -> None:
    """Score the prior's single denoising jump, x ↦ D(2x − 1 + σn; σ) (NAPPure's denoised start without any step),
    for each σ of ``--jump``, on the blind examples of ``--kind``'s attacks (n from a fixed seed)."""
    from edgepure.evaluate.robust import benchmark
    from edgepure.models.loading import resolve_classifier, resolve_prior

    data = _images(args)
    classifier = resolve_classifier(args.classifier)
    prior = resolve_prior(args.prior or "edm_unet_s")
    for sigma in [float(v) for v in args.jump.split(",")]:
        head = {"jump_sigma": sigma, "prior": args.prior or "edm_unet_s", "images": args.images, "n": len(data)}
        if args.blind_methods:
            print(json.dumps({**head, **_blind_worst(args, classifier, data, _jump_purifier(prior, sigma),
                                                     MATCH[args.kind])}), flush=True)
            continue
        r = benchmark(classifier, data, _jump_purifier(prior, sigma), MATCH[args.kind], ["blind"],
                      steps=args.attack_steps, seed=0, batch_size=128, cache_dir=args.cache)
        print(json.dumps({**head, "clean": round(r["clean_accuracy"], 4),
                          "robust": {a: round(v["blind"], 4) for a, v in r["robust_accuracy"].items()}}), flush=True)


def _oracle_mask(pur, how: str) -> None:  # type: ignore[no-untyped-def]
    """Hand an occlusion purifier the true patch: its mask starts at the attack's patch (the protocol's 7×7 centre
    square, logits ≈ ±4, half-covered border pixels at ½); ``fixed`` also stops the mask from moving."""
    from dataclasses import replace

    from edgepure.perturb import create_perturbation

    patch = create_perturbation("patch", "gtsrb")
    identity = pur.family.identity

    def start(x):  # type: ignore[no-untyped-def]
        p = identity(x)
        m = patch.mask(patch.identity(x), x).clamp(0.02, 0.98)  # (N, 1, H, W) coverage of the attack's patch
        p["logits"] = torch.log(m / (1 - m))
        return p

    pur.family.identity = start
    if how == "fixed":
        pur.cfg = replace(pur.cfg, lr_theta={"mask": 0.0})


def _warp_ab(args: argparse.Namespace) -> None:
    """The flow warp's one-hot sampler against ``F.grid_sample`` (what it replaced), alternating in one process."""
    import torch.nn.functional as F

    import edgepure.perturb.families as families
    from edgepure.purifiers import create_purifier

    onehot = families.bilinear_sample
    native = lambda x, g: F.grid_sample(x, g, mode="bilinear", padding_mode="border", align_corners=False)  # noqa: E731
    x = torch.rand(args.batch, 3, 32, 32)
    pur = create_purifier("nappure", kind=args.kind, steps=int(args.steps or 8))
    nz = pur.sample_noise(x, torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {"grid_sample": [], "one-hot": []}
    try:
        for i in range(args.repeat + 2):
            for name, fn in (("grid_sample", native), ("one-hot", onehot)):
                families.bilinear_sample = fn
                t = time.perf_counter()
                pur(x, nz)
                if i >= 2:  # two warm-up rounds
                    times[name].append(time.perf_counter() - t)
    finally:
        families.bilinear_sample = onehot
    print(json.dumps({"kind": args.kind, "steps": pur.steps, "batch": args.batch, "threads": args.threads,
                      "ms_per_image": {k: round(1000 * float(np.median(v)) / args.batch, 1) for k, v in times.items()}}))


def _table(directory: str) -> None:
    """Markdown rows from ``edgepure eval robust --json`` outputs named nappure-<kind>-K<k>.json / none.json."""
    from pathlib import Path

    rows = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            r = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if "robust_accuracy" not in r:
            continue
        cfg = r.get("defense_config", {})
        name = "none" if r["defense"] == "none" else f"{cfg.get('kind')} K={cfg.get('steps')} ({cfg.get('mode')})"
        cells = {a: v for a, v in r["robust_accuracy"].items()}
        cols = " | ".join(
            " / ".join(f"{100 * cells[a][t]:.2f}" for t in r["threats"]) if a in cells else "–"
            for a in ("conv", "patch", "flow", "additive", "all"))
        rows.append(f"| {name} | {r['n']} | {100 * r['clean_accuracy']:.2f} | {cols} | {r['seconds']:.0f} |")
    print("| defense | n | clean | conv | patch | flow | additive | all | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--images", choices=("eval", "tune"), default="tune")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--tune-seed", type=int, default=1)
    ap.add_argument("--kind", default="joint")
    ap.add_argument("--steps", default=None, help="K, or a comma list (default: 8 in fixed mode, the paper's count in reference mode)")
    ap.add_argument("--mode", default="fixed")
    ap.add_argument("--prior-grad", default="full")
    ap.add_argument("--prior", default=None, help="a prior name or checkpoint (.safetensors or run folder) instead of the shipped one")
    ap.add_argument("--classifier", default=None, help="a classifier name or checkpoint instead of the shipped one")
    ap.add_argument("--set", action="append", default=[], help="NAPPure setting key=JSON (repeatable)")
    ap.add_argument("--attack-steps", type=int, default=100)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--warp-ab", action="store_true", help="time the one-hot warp against F.grid_sample (A/B)")
    ap.add_argument("--oracle-mask", choices=("start", "fixed"), default=None,
                    help="occlusion: start the mask at the true 7×7 patch (and with 'fixed' keep it there)")
    ap.add_argument("--table", default=None, help="print a markdown table of the eval JSONs in this folder")
    ap.add_argument("--jump", default=None, help="score the prior's single denoising jump alone at these σ (comma list)")
    ap.add_argument("--blind-methods", default=None,
                    help="blind attacks as method:steps (comma list, e.g. apgd:100,pgd:40,pgd:4): each one's robust "
                         "accuracy and the per-image worst of them, instead of --attack-steps APGD alone")
    args = ap.parse_args()
    if args.table:
        _table(args.table)
        return
    torch.set_num_threads(args.threads)
    if args.latency:
        _latency(args)
        return
    if args.warp_ab:
        _warp_ab(args)
        return
    if args.jump:
        _jump(args)
        return
    from edgepure.cli.common import parse_settings
    from edgepure.evaluate.robust import benchmark
    from edgepure.models.loading import frozen, resolve_classifier
    from edgepure.purifiers import create_purifier

    data = _images(args)
    classifier = resolve_classifier(args.classifier)
    prior = args.prior
    settings = parse_settings(args.set, "--set")
    ks: list = [int(s) for s in args.steps.split(",")] if args.steps else ([8] if args.mode == "fixed" else [None])
    for k in ks:
        pur = create_purifier("nappure", kind=args.kind, steps=k, mode=args.mode, prior=prior,
                              prior_grad=args.prior_grad, **settings)
        if args.oracle_mask:
            if args.kind != "occlusion":
                ap.error("--oracle-mask needs --kind occlusion")
            _oracle_mask(pur, args.oracle_mask)
        t = time.perf_counter()
        if args.blind_methods:
            frozen(pur)
            print(json.dumps({"kind": args.kind, "steps": pur.steps, "prior": args.prior or "shipped", "set": settings,
                              "images": args.images, "n": len(data), **_blind_worst(args, classifier, data, pur,
                                                                                     MATCH[args.kind]),
                              "seconds": round(time.perf_counter() - t, 1)}), flush=True)
            continue
        r = benchmark(classifier, data, pur, MATCH[args.kind], ["blind"], steps=args.attack_steps, seed=0,
                      batch_size=128, cache_dir=args.cache)
        row = {"kind": args.kind, "steps": pur.steps, "classifier": args.classifier or "shipped", "prior": args.prior or "shipped",
               "oracle_mask": args.oracle_mask, "mode": args.mode, "prior_grad": args.prior_grad, "set": settings,
               "images": args.images, "n": r["n"], "clean": round(r["clean_accuracy"], 4),
               "robust": {a: round(v["blind"], 4) for a, v in r["robust_accuracy"].items()},
               "seconds": round(time.perf_counter() - t, 1)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
