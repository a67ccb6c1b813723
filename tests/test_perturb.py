import pytest
import torch

from edgepure.perturb import Composite, create_perturbation
from edgepure.runtime.errors import ConfigError

FAMILIES = ("conv", "patch", "flow", "additive")


def _x(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FAMILIES + ("all",))
def test_identity_is_identity_with_zero_penalty(name: str) -> None:
    p = create_perturbation(name)
    x = _x()
    theta = p.identity(x)
    torch.testing.assert_close(p(x, theta), x, atol=1e-6, rtol=0)
    assert torch.all(p.penalty(theta) == 0)


def _far(p, x):  # parameters far outside any budget
    g = torch.Generator().manual_seed(1)
    return {k: v + 10 * (torch.rand(v.shape, generator=g) * 2 - 1) for k, v in p.identity(x).items()}


def test_projection_respects_budgets() -> None:
    x = _x()
    conv = create_perturbation("conv")
    k = conv.project(_far(conv, x), x)["kernel"]
    assert (k - conv.dirac).abs().max() <= 0.025 + 1e-7
    flow = create_perturbation("flow")
    f = flow.project(_far(flow, x), x)["flow"]
    assert f.abs().max() <= 1.2 + 1e-7 and flow.smooth(f).abs().max() <= 1.2 + 1e-6
    add = create_perturbation("additive")
    d = add.project(_far(add, x), x)["delta"]
    assert d.abs().max() <= 24 / 255 + 1e-7 and (x + d).min() >= 0 and (x + d).max() <= 1
    patch = create_perturbation("patch")
    theta = patch.project(_far(patch, x), x)
    y = patch(x, theta)
    changed = (y - x).abs().sum(1) > 0
    rows, cols = changed.any(0).nonzero(as_tuple=True)
    assert rows.min() >= 12 and rows.max() <= 18 and cols.min() >= 12 and cols.max() <= 18  # the 7×7 at the centre
    assert y.min() >= 0 and y.max() <= 1


def test_cifar_budgets_and_overrides() -> None:
    assert create_perturbation("additive", "cifar10").eps == pytest.approx(8 / 255)
    assert create_perturbation("flow", "cifar10").eps == 3.0
    assert create_perturbation("flow", eps=2.0).eps == 2.0
    with pytest.raises(ConfigError, match="unknown perturbation 'rain'"):
        create_perturbation("rain")
    with pytest.raises(ConfigError, match="bad budget for conv"):
        create_perturbation("conv", radius=3)


@pytest.mark.parametrize("name", FAMILIES)
def test_composite_reduces_to_each_family(name: str) -> None:
    x = _x()
    single = create_perturbation(name)
    comp = create_perturbation("all")
    assert isinstance(comp, Composite)
    theta = single.random(x, torch.Generator().manual_seed(3))
    params = comp.identity(x)
    params.update({f"{name}.{k}": v for k, v in theta.items()})
    torch.testing.assert_close(comp(x, params), single(x, theta), atol=1e-6, rtol=0)


def test_composite_mixing_weights() -> None:
    x = _x()
    comp = Composite([create_perturbation("additive")], learn_weights=True)
    params = comp.identity(x)
    params["additive.delta"] = torch.full_like(x, 0.1) * (x < 0.8)
    params["additive.w"] = torch.tensor([0.0, 0.5, 1.0])
    y = comp(x, params)
    full = (x + params["additive.delta"]).clamp(0, 1)
    torch.testing.assert_close(y[0], x[0])
    torch.testing.assert_close(y[1], 0.5 * full[1] + 0.5 * x[1])
    torch.testing.assert_close(y[2], full[2])
    assert comp.project({**params, "additive.w": torch.tensor([-1.0, 0.5, 2.0])}, x)["additive.w"].tolist() == [0.0, 0.5, 1.0]


def test_occlusion_geometry_is_differentiable() -> None:
    x = _x(1)
    occ = create_perturbation("patch", learn_geometry=True)
    theta = occ.identity(x)
    theta["content"] = torch.zeros_like(x)
    theta["size"] = torch.tensor([5.3], requires_grad=True)
    theta["center"] = torch.tensor([[15.2, 16.7]], requires_grad=True)
    y = occ(x, theta)
    y.sum().backward()
    assert theta["size"].grad is not None and theta["size"].grad.abs() > 0
    assert theta["center"].grad is not None and torch.isfinite(theta["center"].grad).all()
    # mask area equals the square's area when it lies inside the image
    m = occ.mask(theta, x)
    assert float(m.detach().sum()) == pytest.approx(5.3**2, rel=1e-5)


def test_flow_shifts_by_whole_pixels() -> None:
    x = _x(1)
    flow = create_perturbation("flow", smooth_size=1)
    theta = flow.identity(x)
    theta["flow"][:, 0] = 1.0  # sample from one pixel to the right
    y = flow(x, theta)
    torch.testing.assert_close(y[..., :-1], x[..., 1:])


def test_bilinear_sample_matches_grid_sample_to_second_order() -> None:
    """The flow warp's sampler equals PyTorch's bilinear/border grid_sample (values and gradients, float64) and
    its gradient is itself differentiable (NAPPure's adaptive attack takes a gradient of a gradient)."""
    import torch.nn.functional as F

    from edgepure.perturb.warp import bilinear_sample

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 9, dtype=torch.float64, generator=g, requires_grad=True)
    grid = ((torch.rand(2, 5, 7, 2, dtype=torch.float64, generator=g) * 2.6 - 1.3)).requires_grad_(True)  # some outside
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = bilinear_sample(x, grid)
    assert out.shape == ref.shape == (2, 3, 5, 7)
    assert torch.allclose(out, ref, atol=1e-12)
    go = torch.randn(out.shape, dtype=torch.float64, generator=g)
    for a, b in zip(torch.autograd.grad(out, (x, grid), go), torch.autograd.grad(ref, (x, grid), go)):
        assert torch.allclose(a, b, atol=1e-12)
    assert torch.autograd.gradgradcheck(bilinear_sample, (x, grid))
    with pytest.raises(ValueError, match=r"\(N, Ho, Wo, 2\)"):
        bilinear_sample(x, grid[..., :1])


@pytest.mark.parametrize("name", ["conv", "patch", "flow", "additive", "all"])
def test_families_keep_the_images_device(name: str) -> None:
    # the meta device stands in for a GPU: an op that mixes it with a CPU tensor raises, as CUDA would
    x = torch.rand(2, 3, 32, 32, device="meta")
    p = create_perturbation(name, "gtsrb").to("meta")
    g = torch.Generator().manual_seed(0)  # random starts are drawn on the CPU and moved
    for params in (p.identity(x), p.random(x, g)):
        assert {v.device.type for v in params.values()} == {"meta"}
        assert p(x, params).device.type == "meta"
        assert p.penalty(params).device.type == "meta"
        assert {v.device.type for v in p.project(params, x).values()} == {"meta"}


@pytest.mark.parametrize("kind", ["blur", "occlusion", "distortion", "additive", "joint"])
def test_nappure_runs_on_the_images_device(kind: str) -> None:
    from edgepure.purifiers import create_purifier

    x = torch.rand(2, 3, 32, 32, device="meta")
    pur = create_purifier("nappure", kind=kind, steps=2, pretrained=False).to("meta")
    noise = pur.sample_noise(x, torch.Generator().manual_seed(0))
    assert noise is not None and noise.device.type == "meta"
    assert pur(x, noise).shape == x.shape and pur(x, noise).device.type == "meta"
