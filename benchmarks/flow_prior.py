"""Does a prior pull a warped sign back to the straight one? Two measurements behind NAPPure's distortion purifier.

    # the prior term E‖D(y + σn; σ) − y‖² of clean and warped signs, per σ (lower = the prior prefers it)
    python benchmarks/flow_prior.py energy --priors edm_unet_s,edm_unet_s_restore --images synth --n 16
    python benchmarks/flow_prior.py energy --priors edm_unet_s --images PATH/TO/GTSRB --n 256
    # one denoising jump of the warped sign: its image error against the warped one's, and the cosine to the true
    # flow of a flow fitted (100 Adam steps) from the jump to the warped sign
    python benchmarks/flow_prior.py jump --priors edm_unet_s_restore --images PATH/TO/GTSRB --n 64
    # recovering a known flow (the test of tests/test_nappure.py): image error ratio, the found flow's warp of the
    # clean sign against the observation (1 = doing nothing) and the pointwise cosine to the true flow; "oracle" is a
    # prior that returns the clean sign whatever it is given, "oracle:0.5" one that pulls halfway to it
    python benchmarks/flow_prior.py recover --priors edm_unet_s,oracle,oracle:0.5 --steps 16
    python benchmarks/flow_prior.py recover --priors edm_unet_s_restore --steps 16 --set init_sigma=0.05
    python benchmarks/flow_prior.py recover --priors edm_unet_s --warp rotate --amplitude 10   # other known warps

The warp is the one the test uses: (dx, dy) = A·(sin πy, cos πx) over the image (y, x in [−1, 1]), A pixels,
applied by the distortion purifier's own generation model (smoothed bilinear flow). The energy is averaged over
``--draws`` noise draws per image from a fixed seed. Prints one JSON line per prior (and amplitude).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5)


def sine_flow(n: int, amplitude: float, size: int = 32) -> torch.Tensor:
    """The test's known flow: (N, 2, H, W) pixels, (dx, dy) = A·(sin πy, cos πx)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return torch.stack([amplitude * torch.sin(np.pi * yy), amplitude * torch.cos(np.pi * xx)])[None].expand(n, -1, -1, -1)


def _rotation(degrees: float, x: torch.Tensor, y: torch.Tensor, half: float) -> torch.Tensor:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return half * torch.stack([(c - 1) * x - s * y, s * x + (c - 1) * y])


# (amount, x, y, half) -> (2, H, W) pixels: x, y the pixel grid in [-1, 1], half the centre's offset in pixels.
_GRID_FLOWS = {
    "shift": lambda a, x, y, half: torch.stack([torch.full_like(x, a), torch.full_like(x, a / 2)]),
    "rotate": _rotation,
    "zoom": lambda a, x, y, half: half * a * torch.stack([x, y]),
    "shear": lambda a, x, y, half: half * a * torch.stack([y, torch.zeros_like(x)]),
}
WARPS = ("sine", *_GRID_FLOWS)


def known_flow(n: int, warp: str, amount: float, size: int = 32) -> torch.Tensor:
    """A known flow of ``warp`` kind, (N, 2, H, W) pixels: ``sine`` (``sine_flow``, A = ``amount`` px), ``shift`` (dx =
    ``amount``, dy = ``amount``/2 px), ``rotate`` (``amount`` degrees about the centre), ``zoom`` (each pixel displaced
    by ``amount`` × its offset from the centre) or ``shear`` (dx = ``amount`` × the row's offset from the centre)."""
    if warp == "sine":
        return sine_flow(n, amount, size)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return _GRID_FLOWS[warp](amount, xx, yy, (size - 1) / 2)[None].expand(n, -1, -1, -1)


def _images(spec: str, n: int) -> torch.Tensor:
    from edgepure.data import open_dataset

    if spec == "synth":
        return torch.from_numpy(open_dataset("synth", "val", n=n, seed=1).as_float_nchw())
    return torch.from_numpy(open_dataset(spec, "val", size=32).sample(n, 0).as_float_nchw())


@torch.no_grad()
def energy(args: argparse.Namespace) -> None:
    from edgepure.models.loading import resolve_prior
    from edgepure.purifiers.nappure import build_family

    x = _images(args.images, args.n)
    family = build_family("distortion")
    for name in args.priors.split(","):
        prior = resolve_prior(name).eval()
        for amp in (0.0, 1.0, 2.5):
            y = family(x, {"flow": sine_flow(len(x), amp)}) * 2 - 1
            g = torch.Generator().manual_seed(0)
            row = {}
            for s in SIGMAS:
                total = 0.0
                for _ in range(args.draws):
                    noise = torch.randn(y.shape, generator=g)
                    d = prior(y + s * noise, torch.full((len(y),), s))
                    total += float((d - y).square().flatten(1).sum(1).mean())
                row[f"{s:g}"] = round(total / args.draws, 3)
            print(json.dumps({"prior": name, "images": args.images, "n": len(x), "amplitude_px": amp,
                              "prior_term_by_sigma": row}), flush=True)


def jump(args: argparse.Namespace) -> None:
    import torch.nn.functional as F

    from edgepure.models.loading import resolve_prior
    from edgepure.purifiers.nappure import build_family

    x = _images(args.images, args.n)
    family = build_family("distortion")
    for name in args.priors.split(","):
        prior = resolve_prior(name).eval()
        for amp in (1.0, 2.5):
            flow = sine_flow(len(x), amp)
            warped = family(x, {"flow": flow})
            base = float((warped - x).square().mean())
            for s in (0.02, 0.1, 0.3):
                noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
                with torch.no_grad():
                    j = (prior(warped * 2 - 1 + s * noise, torch.full((len(x),), s)).clamp(-1, 1) + 1) / 2
                theta = torch.zeros_like(flow, requires_grad=True)
                opt = torch.optim.Adam([theta], lr=0.1)
                for _ in range(100):
                    loss = (family(j, {"flow": theta}) - warped).square().sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                cos = F.cosine_similarity(family.smooth(theta.detach()).flatten(1), family.smooth(flow).flatten(1))
                print(json.dumps({"prior": name, "images": args.images, "n": len(x), "amplitude_px": amp, "sigma": s,
                                  "jump_error_ratio": round(float((j - x).square().mean()) / base, 3),
                                  "fitted_flow_cosine": round(float(cos.mean()), 3)}), flush=True)


class Oracle(torch.nn.Module):
    """A prior that knows the clean sign: D(y; σ) = share·clean + (1 − share)·y (images in [−1, 1])."""

    def __init__(self, clean: torch.Tensor, share: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("clean", clean * 2 - 1)
        self.share = share

    def forward(self, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.share * self.clean + (1 - self.share) * y


def recover_flow(prior: torch.nn.Module, x: torch.Tensor, steps: int = 16, amplitude: float = 2.5, warp: str = "sine",
                 **settings: object) -> dict[str, float]:
    """Warp ``x`` by a known flow (``known_flow``: the sine flow of ``amplitude`` px unless ``warp`` names another),
    purify it (distortion, K = ``steps``, shipped settings plus ``settings``) and score the result
    (tests/test_nappure.py asserts on the same numbers)."""
    import torch.nn.functional as F

    import edgepure

    pur = edgepure.create_purifier("nappure", kind="distortion", steps=steps, prior=prior, **settings)
    flow = known_flow(len(x), warp, amplitude)
    warped = pur.family(x, {"flow": flow})
    out, theta, _ = pur.purify(warped, pur.sample_noise(warped, torch.Generator().manual_seed(0)))
    err = lambda a, b: float((a - b).square().flatten(1).mean(1).mean())  # noqa: E731
    with torch.no_grad():
        est, true = pur.family.smooth(theta["flow"]), pur.family.smooth(flow)
        return {"image_mse_warped": round(err(warped, x), 5), "image_mse_purified": round(err(out, x), 5),
                "ratio": round(err(out, x) / err(warped, x), 3),
                # the found flow applied to the clean sign, against the observation (1 = doing nothing): over flat
                # colour any flow gives the same image, so the flow is scored by what it does to the sign
                "flow_effect_ratio": round(err(pur.family(x, theta), warped) / err(x, warped), 3),
                "flow_cosine": round(float(F.cosine_similarity(est.flatten(1), true.flatten(1)).mean()), 3),
                "flow_mean_abs_px": round(float(est.abs().mean()), 3),
                "true_mean_abs_px": round(float(true.abs().mean()), 3)}


def recover(args: argparse.Namespace) -> None:
    from edgepure.cli.common import parse_settings
    from edgepure.models.loading import resolve_prior

    x = _images(args.images, args.n)
    settings = parse_settings(args.set, "--set")
    for name in args.priors.split(","):
        oracle, _, share = name.partition(":")
        prior = Oracle(x, float(share or 1.0)) if oracle == "oracle" else resolve_prior(name)
        print(json.dumps({"prior": name, "steps": args.steps, "settings": settings, "warp": args.warp,
                          "amount": args.amplitude}
                         | recover_flow(prior, x, args.steps, args.amplitude, args.warp, **settings)), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["energy", "jump", "recover"])
    ap.add_argument("--priors", default="edm_unet_s", help="comma list of priors: registered names or checkpoints")
    ap.add_argument("--images", default="synth", help="'synth' (renders, as the test) or a GTSRB path (validation tracks)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--draws", type=int, default=8, help="noise draws per image (energy)")
    ap.add_argument("--steps", type=int, default=16, help="K (recover)")
    ap.add_argument("--warp", choices=WARPS, default="sine", help="the known flow's kind (recover; see known_flow)")
    ap.add_argument("--amplitude", type=float, default=2.5,
                    help="its size (recover): sine A and shift in px, rotate in degrees, zoom and shear as fractions")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a purifier setting (recover)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"energy": energy, "jump": jump, "recover": recover}[args.what](args)


if __name__ == "__main__":
    main()
