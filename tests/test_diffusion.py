"""Heterogeneous-noise diffusion purification: mask, determinism, range, configuration, export, and that it
undoes a blind attack the classifier falls for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgepure
from edgepure.models.registry import create_prior
from edgepure.purifiers.diffusion import HeteroDiffusion, attention_mask, ddpm_alphas_bar
from edgepure.runtime.errors import ConfigError


@pytest.fixture(scope="module")
def tiny() -> HeteroDiffusion:
    torch.manual_seed(0)
    clf = edgepure.create_classifier("signnet_xs", pretrained=False).eval()
    return HeteroDiffusion(create_prior("edm_unet_xs", pretrained=False), clf, calls=2)


def test_schedule_is_the_linear_beta_ddpm_one() -> None:
    a = ddpm_alphas_bar(1000)
    assert a.shape == (1001,) and a[0] == 1.0 and torch.all(a[1:] < a[:-1])
    assert float(a[1]) == pytest.approx(1 - 1e-4) and float(a[1000]) == pytest.approx(4.04e-5, rel=0.01)


def test_mask_is_binary_from_the_classifier_stages_and_shrinks_with_tau(tiny: HeteroDiffusion) -> None:
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loose, strict = attention_mask(tiny.classifier, x, 0.3), attention_mask(tiny.classifier, x, 0.9)
    assert loose.shape == (4, 1, 32, 32) and set(loose.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(strict <= loose) and strict.sum() < loose.sum()
    assert torch.all(attention_mask(tiny.classifier, x, 0.0) == 1)
    assert torch.all(strict.sum(dim=(1, 2, 3)) >= 1)  # every image's maximum is attended


def test_deterministic_given_noise_in_range_and_shape(tiny: HeteroDiffusion) -> None:
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    noise = tiny.sample_noise(x, torch.Generator().manual_seed(3))
    assert noise is not None and noise.shape == (3, 5, 3, 32, 32)
    with torch.no_grad():
        a, b = tiny(x, noise), tiny(x, noise)
        c = tiny(x, tiny.sample_noise(x, torch.Generator().manual_seed(4)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_grid_settings_round_trip_and_bad_settings_are_user_errors(tiny: HeteroDiffusion) -> None:
    assert tiny.grid == [200, 100, 0] and tiny.low_t == 100
    p = edgepure.create_purifier("hetero_diffusion", pretrained=False, calls=4, t_l=0.1, t_s=0.05)
    assert p.grid == [100, 75, 50, 25, 0] and p.calls_per_image() == {"denoiser": 4, "classifier": 1}
    again = edgepure.create_purifier("hetero_diffusion", pretrained=False, **p.config())
    assert again.config() == p.config()
    with pytest.raises(ConfigError, match="t_s ≤ t_l"):
        edgepure.create_purifier("hetero_diffusion", pretrained=False, t_l=0.1, t_s=0.2)
    with pytest.raises(ConfigError, match="calls must be an integer ≥ 1"):
        edgepure.create_purifier("hetero_diffusion", pretrained=False, calls=0)
    with pytest.raises(ConfigError, match="stage_features"):
        HeteroDiffusion(create_prior("edm_unet_xs", pretrained=False), torch.nn.Conv2d(3, 3, 1))


def test_unattended_pixels_carry_only_the_weak_noise(tiny: HeteroDiffusion) -> None:
    """With (almost) nothing attended every pixel is the input re-noised to t_s before the last step: the
    output stays closer to the input than with everything attended (strong noise everywhere)."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    noise = tiny.sample_noise(x, torch.Generator().manual_seed(6))
    with torch.no_grad():
        weak = HeteroDiffusion(tiny.prior, tiny.classifier, tau=1.0, calls=2)  # only each stage's maximum
        strong = HeteroDiffusion(tiny.prior, tiny.classifier, tau=0.0, calls=2)  # every pixel
        assert float(attention_mask(tiny.classifier, x, 1.0).mean()) < 0.02
        d_weak = (weak(x, noise) - x).abs().mean()
        d_strong = (strong(x, noise) - x).abs().mean()
    assert d_weak < 0.8 * d_strong


def test_exports_to_onnx_with_parity(tiny: HeteroDiffusion, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgepure.export.pipeline import export_pipeline

    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    m = export_pipeline(tiny, tiny.classifier, tmp_path / "hd", x, overwrite=True,
                        purifier_info={"name": "hetero_diffusion", "config": tiny.config()})
    assert m["models"]["purifier"]["parity"]["max_abs_diff"] < 1e-4
    assert m["purifier"]["stochastic"] and m["purifier"]["noise"] == "input"


def test_undoes_a_blind_additive_attack_on_rendered_signs() -> None:
    from edgepure.attacks import APGD
    from edgepure.data import open_dataset
    from edgepure.perturb import create_perturbation

    data = open_dataset("synth", "val", n=48, seed=3)
    x, y = torch.from_numpy(data.as_float_nchw()), torch.from_numpy(data.labels)
    clf = edgepure.load_classifier()
    x_adv = APGD(clf, create_perturbation("additive", "gtsrb"), steps=10, seed=0)(x, y).detach()
    pur = edgepure.create_purifier("hetero_diffusion")  # the paper's settings; the budget is 24/255 (GTSRB)
    with torch.no_grad():
        bare = (clf(x_adv).argmax(1) == y).float().mean()
        purified = (clf(pur(x_adv, pur.sample_noise(x_adv, torch.Generator().manual_seed(0)))).argmax(1) == y).float().mean()
    assert bare < 0.1 and purified > bare + 0.15, (float(bare), float(purified))


def test_vote_logits_take_the_majority_and_break_ties_by_mean_softmax() -> None:
    from edgepure.export.voting import vote_logits

    # 3 draws of 2 images, 3 classes: image 0 votes 1, 1, 2 → class 1; image 1 votes 0, 2 (and a near-tie 2)
    lg = torch.tensor([[[0.0, 5.0, 1.0], [3.0, 0.0, 2.9]],
                       [[0.0, 2.0, 1.9], [0.0, 0.0, 4.0]],
                       [[0.0, 1.0, 9.0], [0.0, 1.0, 2.0]]]).reshape(6, 3)
    out = vote_logits(lg, 3)
    assert out.shape == (2, 3) and out.argmax(1).tolist() == [1, 2]
    share = out.softmax(1)  # (votes + mean softmax) / (R + 1)
    assert torch.allclose(share.sum(1), torch.ones(2)) and float(share[0, 1]) > 2 / 4
    # a majority of one vote beats any softmax mass: class 0 confident in one draw, class 1 by a hair in two
    close = torch.tensor([[9.0, 0.0], [0.0, 0.01], [0.0, 0.01]])
    assert int(vote_logits(close, 3).argmax(1)) == 1 and int(close.softmax(1).mean(0).argmax()) == 0
    tie = torch.tensor([[9.0, 0.0], [0.0, 0.01]])  # one vote each: the confident draw wins the tie
    assert int(vote_logits(tie, 2).argmax(1)) == 0
    with pytest.raises(ValueError, match="R = 4"):
        vote_logits(lg, 4)


def test_votes_batch_r_purifications_in_one_graph_with_parity(tiny: HeteroDiffusion, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgepure.export.pipeline import export_pipeline
    from edgepure.export.voting import Voting, pipeline_module
    from edgepure.runtime.model import EdgeModel

    voter = HeteroDiffusion(tiny.prior, tiny.classifier, calls=2, votes=3)
    assert voter.config()["votes"] == 3 and voter.calls_per_image() == {"denoiser": 6, "classifier": 5}
    pipe = pipeline_module(voter, tiny.classifier)
    assert isinstance(pipe, Voting) and type(pipeline_module(tiny, tiny.classifier)) is not Voting
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    noise = pipe.sample_noise(x, torch.Generator().manual_seed(8))
    assert noise is not None and noise.shape == (3, 2, 5, 3, 32, 32)
    with torch.no_grad():
        got = pipe(x, noise)
        draws = torch.stack([tiny.classifier(tiny(x, noise[r])) for r in range(3)])  # draw r of image i: noise[r, i]
    from edgepure.export.voting import vote_logits

    assert torch.allclose(got, vote_logits(draws.reshape(6, -1), 3), atol=1e-5)
    with pytest.raises(ConfigError, match="stochastic"):
        Voting(edgepure.create_purifier("median"), tiny.classifier, 2)

    imgs = np.random.default_rng(1).random((4, 3, 32, 32), dtype=np.float32)
    m = export_pipeline(voter, tiny.classifier, tmp_path / "vote", imgs, batch=2, overwrite=True,
                        purifier_info={"name": "hetero_diffusion", "config": voter.config()})
    pipe_in = {i["name"]: i["shape"] for i in m["models"]["pipeline"]["inputs"]}
    assert pipe_in["noise"] == [3, 2, 5, 3, 32, 32] and m["purifier"]["config"]["votes"] == 3
    assert m["models"]["pipeline"]["parity"]["max_abs_diff"] < 1e-3
    classes = m["models"]["classifier"]["outputs"][0]["shape"][1]
    assert m["models"]["pipeline"]["outputs"][0]["shape"] == [2, classes]
    # the runtime feeds the pipeline's (R, N, ...) noise input from the graph's shape, unchanged
    assert EdgeModel(tmp_path / "vote").logits(imgs[:2]).shape == (2, classes)
