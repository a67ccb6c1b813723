"""COUP: guided reverse diffusion from the input; determinism, range, K ≥ 1, the guidance is the classifier's
input gradient, an attacker's gradient flows through it, and the graph exports with parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import edgepure
from edgepure.models.registry import create_prior
from edgepure.purifiers.coup import COUP
from edgepure.runtime.errors import ConfigError


@pytest.fixture(scope="module")
def tiny() -> COUP:
    torch.manual_seed(0)
    clf = edgepure.create_classifier("signnet_xs", pretrained=False).eval()
    return COUP(create_prior("edm_unet_xs", pretrained=False), clf, steps=3)


def test_deterministic_given_noise_in_range_and_shape(tiny: COUP) -> None:
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    noise = tiny.sample_noise(x, torch.Generator().manual_seed(2))
    assert noise is not None and noise.shape == (3, 3, 3, 32, 32)
    a, b = tiny(x, noise), tiny(x, noise)
    c = tiny(x, tiny.sample_noise(x, torch.Generator().manual_seed(3)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0 and not a.requires_grad


def test_zero_steps_are_refused_and_settings_round_trip(tiny: COUP) -> None:
    with pytest.raises(ConfigError, match="steps must be an integer ≥ 1, got 0"):
        COUP(tiny.prior, tiny.classifier, steps=0)
    p = edgepure.create_purifier("coup", pretrained=False, steps=2, lam=0.5)
    assert edgepure.create_purifier("coup", pretrained=False, **p.config()).config() == p.config()
    assert p.calls_per_image() == {"denoiser": 2, "classifier_with_gradient": 2}
    with pytest.raises(ConfigError, match="t_star"):
        edgepure.create_purifier("coup", pretrained=False, t_star=0.0)
    with pytest.raises(ConfigError, match="steps"):
        edgepure.create_purifier("coup", pretrained=False, steps=-1)


def test_guidance_is_the_gradient_of_the_log_confidence(tiny: COUP) -> None:
    y = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 2 - 1
    clf = tiny.classifier.double()
    try:
        g = tiny.guidance(y, create_graph=False)
        eps = 1e-6
        d = torch.zeros_like(y)
        d[0, 1, 5, 7] = eps

        def logconf(v: torch.Tensor) -> torch.Tensor:
            return F.log_softmax(clf((v + 1) / 2), dim=1).max(dim=1).values[0]

        numeric = (logconf(y + d) - logconf(y - d)) / (2 * eps)
        assert float(g[0, 1, 5, 7]) == pytest.approx(float(numeric), rel=1e-4, abs=1e-8)
    finally:
        clf.float()


def test_guidance_changes_the_output_and_attackers_get_a_gradient(tiny: COUP) -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    noise = tiny.sample_noise(x, torch.Generator().manual_seed(5))
    unguided = COUP(tiny.prior, tiny.classifier, steps=3, lam=0.0)
    assert not torch.allclose(tiny(x, noise), unguided(x, noise))
    xr = x.clone().requires_grad_(True)
    out = tiny(xr, noise)
    assert out.requires_grad
    (gx,) = torch.autograd.grad(out.sum(), xr)
    assert torch.isfinite(gx).all() and float(gx.abs().sum()) > 0


def test_exports_to_onnx_with_parity(tiny: COUP, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgepure.export.pipeline import export_pipeline

    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    m = export_pipeline(tiny, tiny.classifier, tmp_path / "coup", x, overwrite=True,
                        purifier_info={"name": "coup", "config": tiny.config()})
    assert m["models"]["purifier"]["parity"]["max_abs_diff"] < 1e-4
    assert m["models"]["pipeline"]["parity"]["top1_agreement"] >= 0.99


def test_undoes_a_blind_additive_attack_on_rendered_signs() -> None:
    from edgepure.attacks import APGD
    from edgepure.data import open_dataset
    from edgepure.perturb import create_perturbation

    data = open_dataset("synth", "val", n=48, seed=3)
    x, y = torch.from_numpy(data.as_float_nchw()), torch.from_numpy(data.labels)
    clf = edgepure.load_classifier()
    x_adv = APGD(clf, create_perturbation("additive", "gtsrb"), steps=10, seed=0)(x, y).detach()
    pur = edgepure.create_purifier("coup", steps=4)  # the paper's t* = 0.1 and λ = 1; budget 24/255 (GTSRB)
    with torch.no_grad():
        bare = (clf(x_adv).argmax(1) == y).float().mean()
        purified = (clf(pur(x_adv, pur.sample_noise(x_adv, torch.Generator().manual_seed(0)))).argmax(1) == y).float().mean()
    assert bare < 0.1 and purified > bare + 0.2, (float(bare), float(purified))
