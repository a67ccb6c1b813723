"""NAPPure: both modes for every kind on tiny weights, determinism, K ≥ 1, the loss going down, gradients for
adaptive attacks, export parity — and, with the shipped prior, recovery of a known blur, flow and patch."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import edgepure
from edgepure.data import open_dataset
from edgepure.purifiers.nappure import KINDS, NAPPure
from edgepure.runtime.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from flow_prior import Oracle, recover_flow, sine_flow  # noqa: E402  (the flow-recovery measurement, shared)


def _tiny(kind: str, steps: int = 2, mode: str = "fixed", **kw: object) -> NAPPure:
    torch.manual_seed(0)
    return edgepure.create_purifier("nappure", kind=kind, steps=steps, mode=mode, prior="edm_unet_xs",
                                    pretrained=False, **kw)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def signs() -> torch.Tensor:
    return torch.from_numpy(open_dataset("synth", "val", n=4, seed=1).as_float_nchw())


@pytest.mark.parametrize("kind", KINDS)
def test_fixed_mode_is_deterministic_given_the_noise(kind: str, signs: torch.Tensor) -> None:
    pur = _tiny(kind)
    x = signs[:2]
    assert pur.noise_shape(x) == (2, 2, 3 * 32 * 32 + 1)
    nz = pur.sample_noise(x, torch.Generator().manual_seed(0))
    a, b = pur(x, nz), pur(x, nz)
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= float(a.min()) and float(a.max()) <= 1
    other = pur(x, pur.sample_noise(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, other)
    assert not torch.equal(a, x)  # two steps moved the image


@pytest.mark.parametrize("mode", ["fixed", "reference"])
def test_zero_steps_are_refused(mode: str) -> None:
    with pytest.raises(ConfigError, match="steps must be an integer ≥ 1, got 0"):
        _tiny("blur", steps=0, mode=mode)


@pytest.mark.parametrize("kind", KINDS)
def test_reference_mode_uses_the_paper_settings(kind: str, signs: torch.Tensor) -> None:
    ref = edgepure.create_purifier("nappure", kind=kind, mode="reference", prior="edm_unet_xs", pretrained=False)
    assert ref.steps == (100 if kind == "additive" else 500) and ref.cfg.lr_x == 0.1
    assert set(ref.cfg.lr_theta.values()) == {0.05}
    short = _tiny(kind, steps=3, mode="reference")
    out = short(signs[:1])
    assert out.shape == (1, 3, 32, 32) and short.config()["mode"] == "reference"


def test_bad_settings_are_user_errors(signs: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="unknown kind 'rain'"):
        _tiny("rain")
    with pytest.raises(ConfigError, match="mode must be"):
        _tiny("blur", mode="fast")
    with pytest.raises(ConfigError, match="unknown setting"):
        _tiny("blur", lamda2=3.0)
    pur = _tiny("blur")
    with pytest.raises(ConfigError, match=r"noise must have shape \(1, 2, 3073\)"):
        pur(signs[:1], torch.zeros(1, 3, 3073))


def test_a_denoised_start_is_one_diffusion_jump_then_the_same_steps(signs: torch.Tensor) -> None:
    from dataclasses import replace

    x = signs[:2]
    pur = _tiny("additive", steps=1, init_sigma=0.5)
    assert pur.calls_per_image() == {"denoiser_with_gradient": 1, "denoiser": 1}
    nz = pur.sample_noise(x, torch.Generator().manual_seed(0))
    a, b = pur(x, nz), pur(x, nz)
    assert torch.equal(a, b) and 0 <= float(a.min()) and float(a.max()) <= 1
    # with no image step the output is the prior's denoising of x noised to σ₀ by step 1's noise image
    frozen = NAPPure(pur.prior, replace(pur.cfg, lr_x=0.0))
    y_adv = x * 2 - 1
    jump = pur.prior(y_adv + 0.5 * nz[:, 0, :3072].reshape(2, 3, 32, 32), torch.full((2,), 0.5)).clamp(-1, 1)
    assert torch.allclose(frozen(x, nz), ((jump + 1) / 2).clamp(0, 1), atol=1e-6)
    # additive θ starts at its conditional optimum: argmin λ1‖δ‖² + λ2‖r − 2δ‖²
    theta = pur._fit_theta(pur.family.identity(x), jump, y_adv)
    lam1, lam2 = pur.cfg.lam1["additive"], pur.cfg.lam2
    d = theta["delta"].clone().requires_grad_(True)
    obj = lam1 * d.square().sum() + lam2 * (y_adv - jump - 2 * d).square().sum()
    (g,) = torch.autograd.grad(obj, d)
    assert float(g.abs().max()) < 1e-4
    with pytest.raises(ConfigError, match="init_sigma must be > 0"):
        _tiny("additive", init_sigma=0.0)


def _mean_loss(pur: NAPPure, y: torch.Tensor, y_adv: torch.Tensor, theta: dict, draws: int = 6) -> float:
    g = torch.Generator().manual_seed(123)
    total = 0.0
    for _ in range(draws):
        n = torch.randn(y.shape, generator=g)
        z = torch.randn(y.shape[0], generator=g)
        total += float(pur.loss(y, y_adv, theta, n, z).mean())
    return total / draws


def _objective_ratio(pur: NAPPure, signs: torch.Tensor) -> tuple[float, int]:
    """The objective after the steps over the one at the start (x = x_adv, θ = identity) on noisy signs, and the
    length of the tracked history."""
    x_adv = (signs + 0.1 * torch.randn(signs.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    y_adv = x_adv * 2 - 1
    out, theta, history = pur.purify(x_adv, pur.sample_noise(x_adv, torch.Generator().manual_seed(0)), track=True)
    before = _mean_loss(pur, y_adv, y_adv, pur.family.identity(x_adv))
    return _mean_loss(pur, out * 2 - 1, y_adv, theta) / before, len(history)


@pytest.mark.parametrize("kind", ["additive", "distortion", "joint"])
def test_the_objective_goes_down_over_the_steps(kind: str, signs: torch.Tensor) -> None:
    # λ2 fixed: on an untrained prior the prior term's gradient is arbitrary, and with distortion's default λ2 3 the
    # likelihood it gives up outweighs what the prior gains (1.01×); the shipped prior with the shipped settings is the
    # test after this one
    pur = _tiny(kind, steps=25, lr_x=0.02, adam_eps=1e-8, **({"lam2": 1.0} if kind == "distortion" else {}))
    ratio, tracked = _objective_ratio(pur, signs)
    assert tracked == 26
    assert ratio < 0.97


@pytest.mark.parametrize("kind", ["distortion", "blur"])
def test_with_the_shipped_prior_and_settings_the_objective_goes_down(kind: str, prior: torch.nn.Module,
                                                                     signs: torch.Tensor) -> None:
    ratio, _ = _objective_ratio(edgepure.create_purifier("nappure", kind=kind, steps=16, prior=prior), signs)
    assert ratio < 0.95  # measured: distortion (λ2 3) 0.90×, blur 0.78×


def test_forward_only_prior_gradient_differs_from_the_full_one(signs: torch.Tensor) -> None:
    full, fwd = _tiny("additive", steps=3), _tiny("additive", steps=3, prior_grad="forward")
    nz = full.sample_noise(signs, torch.Generator().manual_seed(0))
    a, b = full(signs, nz), fwd(signs, nz)
    assert not torch.allclose(a, b) and fwd.config()["prior_grad"] == "forward"


@pytest.mark.parametrize("kind", ["occlusion", "joint"])
def test_adaptive_attacks_get_finite_gradients_through_the_steps(kind: str, signs: torch.Tensor) -> None:
    pur = _tiny(kind, steps=2)
    x = signs[:2].clone().requires_grad_(True)
    out = pur(x, pur.sample_noise(x, torch.Generator().manual_seed(0)))
    assert out.requires_grad
    (g,) = torch.autograd.grad(out.square().sum(), x)
    assert torch.isfinite(g).all() and float(g.abs().sum()) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_what_an_adaptive_attack_differentiates_is_the_deployed_purifier(kind: str, signs: torch.Tensor) -> None:
    # with a graph (x requires grad) each step must still take the partial gradient (θ fixed in the x step, y fixed
    # in the θ step); following θ's dependence on the earlier y moved the output by 1e-2 at K = 3
    pur = _tiny(kind, steps=3)
    nz = pur.sample_noise(signs, torch.Generator().manual_seed(0))
    with torch.no_grad():
        deployed = pur(signs, nz)
    attacked = pur(signs.clone().requires_grad_(True), nz)
    assert attacked.requires_grad and torch.allclose(attacked.detach(), deployed, atol=1e-5)


def test_one_step_exports_with_its_gradients(tmp_path: Path, signs: torch.Tensor) -> None:
    import onnx

    from edgepure.export.pipeline import export_pipeline

    torch.manual_seed(0)
    # two steps: the second warps by the flow the first one found (one step would warp by the identity only, a
    # constant the exporter folds); with the denoised start: one more prior call in the graph
    # and learned per-step step sizes (edgepure train nappure): constants of the graph, recorded in the manifest
    pur = _tiny("distortion", steps=2, init_sigma=0.5, step_scale={"x": [1.5, 0.5], "flow": [2.0, 1.0]})
    clf = edgepure.create_classifier("signnet_xs").eval()
    m = export_pipeline(pur, clf, tmp_path / "np", signs.numpy(), batch=1, parity_batches=2)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "np" / "purifier.onnx")).graph.node}
    # the warp is one-hot interpolation matrices (Equal + MatMul), forward and backward: no GridSample, no scatter
    assert {"ConvTranspose", "Equal", "MatMul"} <= ops and "GridSample" not in ops
    assert not any("Scatter" in o for o in ops)
    assert m["models"]["purifier"]["parity"]["max_abs_diff"] < 1e-5
    assert m["models"]["purifier"]["lint"]["errors"] == 0
    assert m["purifier"]["config"]["kind"] == "distortion" and m["purifier"]["config"]["init_sigma"] == 0.5
    assert m["purifier"]["config"]["step_scale"] == {"x": [1.5, 0.5], "flow": [2.0, 1.0]}


# --- with the shipped prior: the purifier undoes a known perturbation ---------------------------------------

@pytest.fixture(scope="module")
def prior() -> torch.nn.Module:
    from edgepure.models.registry import create_prior

    return create_prior("edm_unet_s", pretrained=True)


def _err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).square().flatten(1).mean(1)


_NOT_YET = ("measured on synthetic renders with the shipped prior, K = 16: image MSE 0.0043 → 0.0037 (0.86×), the found "
            "flow applied to the clean sign leaves 0.74× the warp's error (an oracle prior: 0.20×). The prior term is "
            "lower for a warped sign than for the straight one (bilinear resampling smooths it), so the objective does "
            "not favour unwarping. See docs/nappure.md, 'What limits flow recovery'")


def test_recovers_a_known_blur(prior: torch.nn.Module, signs: torch.Tensor) -> None:
    """With the kernel kept a blur (``kernel_simplex``) and a θ step that can reach it in 16 steps, the kernel is
    found and the image sharpened; without the constraint, kernel and image trade scale (docs/nappure.md)."""
    pur = edgepure.create_purifier("nappure", kind="blur", steps=16, prior=prior, kernel_simplex=True,
                                   lr_theta={"conv": 0.05})
    kernel = torch.full((5, 5), 1 / 25.0)
    blurred = pur.family(signs, {"kernel": kernel.expand(len(signs), 5, 5)})
    out, theta, _ = pur.purify(blurred, pur.sample_noise(blurred, torch.Generator().manual_seed(0)))
    dirac = pur.family.dirac
    found = (theta["kernel"] - kernel).abs().sum(dim=(1, 2))
    # measured: 0.02× the Dirac's distance to the true kernel (doing nothing: 1×; without the constraint: 1.29×)
    assert float(found.mean()) < 0.2 * float((dirac - kernel).abs().sum())
    assert torch.allclose(theta["kernel"].sum(dim=(1, 2)), torch.ones(len(signs))) and float(theta["kernel"].min()) >= 0
    assert float(_err(out, signs).mean()) < 0.85 * float(_err(blurred, signs).mean())  # 0.74× (unconstrained: 4.4×)


def test_with_a_prior_that_knows_the_sign_the_steps_recover_the_flow(signs: torch.Tensor) -> None:
    """The machinery (the unrolled x and θ steps, the shipped K = 16 settings) given a perfect prior (D returns the
    clean sign, whatever it is given): it straightens the image and finds a flow that reproduces the 2.5 px warp.
    The image is scored against the warped one's error, the flow by its warp of the clean sign against the
    observation (1 for doing nothing: over flat colour the flow is undetermined, so not pointwise).
    What the shipped prior lacks (next test) is the prior."""
    r = recover_flow(Oracle(signs), signs)
    assert r["ratio"] < 0.3 and r["flow_effect_ratio"] < 0.4  # measured 0.16 / 0.20


@pytest.mark.xfail(strict=True, reason=_NOT_YET)
def test_recovers_a_known_flow(prior: torch.nn.Module, signs: torch.Tensor) -> None:
    r = recover_flow(prior, signs)
    assert r["ratio"] < 0.7 and r["flow_effect_ratio"] < 0.5


def test_given_the_clean_image_the_theta_steps_recover_the_flow(signs: torch.Tensor) -> None:
    """The likelihood half of the machinery: with x held at the truth, Adam on θ finds the warp."""
    pur = _tiny("distortion", steps=1)
    flow = sine_flow(len(signs), 1.0)
    warped = pur.family(signs, {"flow": flow})
    theta = {"flow": torch.zeros_like(flow, requires_grad=True)}
    opt = torch.optim.Adam(theta.values(), lr=0.1)
    for _ in range(150):
        loss = ((pur.family(signs, theta) - warped) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    est = pur.family.smooth(theta["flow"].detach())
    true = pur.family.smooth(flow)
    # flat regions leave the flow undetermined even with the true image; 0.73 measured, 0.0 at the start
    assert float(F.cosine_similarity(est.flatten(1), true.flatten(1)).mean()) > 0.6


@pytest.mark.parametrize(("mode", "steps", "factor"), [("fixed", 16, 0.85), ("reference", 150, 0.5)])
def test_recovers_an_occluded_patch(prior: torch.nn.Module, signs: torch.Tensor, mode: str, steps: int,
                                    factor: float) -> None:
    pur = edgepure.create_purifier("nappure", kind="occlusion", mode=mode, steps=steps, prior=prior)
    occluded = signs.clone()
    occluded[:, :, 12:19, 12:19] = torch.tensor([0.9, 0.9, 0.2]).view(1, 3, 1, 1)  # a yellow sticker
    out, theta, _ = pur.purify(occluded, pur.sample_noise(occluded, torch.Generator().manual_seed(0)))
    region = (slice(None), slice(None), slice(12, 19), slice(12, 19))
    assert float(_err(out[region], signs[region]).mean()) < factor * float(_err(occluded[region], signs[region]).mean())
    m = pur.family.mask(theta)
    inside = m[region].mean()
    outside = (m.sum() - m[region].sum()) / (len(m) * (1024 - 49))
    assert float(inside) > 0.7 and float(inside) > 2.5 * float(outside)  # the mask found the sticker


def test_votes_take_the_majority_of_r_purifications(signs: torch.Tensor) -> None:
    from edgepure.export.voting import Voting, pipeline_module, vote_logits

    pur = _tiny("additive", steps=1, init_sigma=0.5, votes=3)
    assert pur.calls_per_image() == {"denoiser_with_gradient": 3, "denoiser": 3, "classifier": 2}
    clf = edgepure.create_classifier("signnet_xs").eval()
    pipe = pipeline_module(pur, clf)
    assert isinstance(pipe, Voting)
    x = signs[:2]
    noise = pipe.sample_noise(x, torch.Generator().manual_seed(8))
    assert noise is not None and noise.shape == (3, 2, 1, 3 * 32 * 32 + 1)
    got = pipe(x, noise)
    with torch.no_grad():
        draws = torch.cat([clf(pur(x, noise[r])) for r in range(3)])  # draw r of image i: noise[r, i]
    assert torch.allclose(got, vote_logits(draws, 3), atol=1e-5)
    with pytest.raises(ConfigError, match="votes"):
        _tiny("additive", votes=0)
