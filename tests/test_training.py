import math
import stat
from pathlib import Path

import pytest
import torch

from edgepure.models.loading import resolve_classifier
from edgepure.runtime.errors import ConfigError, ModelError
from edgepure.training.augment import AugmentConfig, augment_batch, gaussian_blur
from edgepure.training.classifier import TrainConfig, cutmix_batch, train_classifier


def _cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="signnet_xs", epochs=1, batch_size=8, val_fraction=0.25, lr=0.05)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "last.safetensors"))


def test_one_training_step_changes_weights_and_writes_checkpoints(gtsrb_dir: Path, tmp_path: Path,
                                                               umask: int) -> None:
    out = tmp_path / "run"
    record = train_classifier(_cfg(gtsrb_dir, out, max_steps=1), log=lambda s: None)
    assert record["epoch"] == 0 and len(record["history"]) == 1
    for name in ("last.safetensors", "last.optim.safetensors", "last.json", "best.safetensors", "best.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp"))
    assert stat.S_IMODE((out / "last.safetensors").stat().st_mode) == 0o666 & ~umask  # not safetensors' 0600
    torch.manual_seed(0)  # the trainer's own initialisation seed
    from edgepure.models.registry import create_classifier

    fresh = create_classifier("signnet_xs").state_dict()
    trained = _weights(out)
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh if fresh[k].is_floating_point())
    model = resolve_classifier(str(out))  # a run folder loads as a --model
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 43)


def test_same_seed_same_weights(gtsrb_dir: Path, tmp_path: Path) -> None:
    train_classifier(_cfg(gtsrb_dir, tmp_path / "a", max_steps=3), log=lambda s: None)
    train_classifier(_cfg(gtsrb_dir, tmp_path / "b", max_steps=3), log=lambda s: None)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_exactly(gtsrb_dir: Path, tmp_path: Path) -> None:
    train_classifier(_cfg(gtsrb_dir, tmp_path / "full", epochs=2), log=lambda s: None)

    def crash_after_first_epoch(msg: str) -> None:
        if msg.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(_cfg(gtsrb_dir, tmp_path / "cut", epochs=2), log=crash_after_first_epoch)
    logs: list[str] = []
    record = train_classifier(_cfg(gtsrb_dir, tmp_path / "cut", epochs=2), resume=True, log=logs.append)
    assert logs[0].startswith("resuming from epoch 1") and record["epoch"] == 1
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_refuses_other_settings(gtsrb_dir: Path, tmp_path: Path) -> None:
    train_classifier(_cfg(gtsrb_dir, tmp_path / "r", max_steps=1), log=lambda s: None)
    with pytest.raises(ModelError, match="trained with seed=0, asked to resume with 1"):
        train_classifier(_cfg(gtsrb_dir, tmp_path / "r", seed=1), resume=True, log=lambda s: None)
    with pytest.raises(ModelError, match="no checkpoint to resume from"):
        train_classifier(_cfg(gtsrb_dir, tmp_path / "empty"), resume=True, log=lambda s: None)


def test_augmentation_is_seeded_and_in_range() -> None:
    x = torch.rand(16, 3, 32, 32)
    a = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(1))
    b = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(1))
    c = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and a.shape == x.shape
    same = augment_batch(x, AugmentConfig.none(), torch.Generator().manual_seed(1))
    assert torch.allclose(same, x, atol=1e-5)


def test_gaussian_blur_preserves_constants_and_smooths() -> None:
    const = torch.full((2, 3, 16, 16), 0.4)
    torch.testing.assert_close(gaussian_blur(const, torch.tensor([0.5, 1.5])), const)
    noise = torch.rand(1, 3, 16, 16)
    assert gaussian_blur(noise, torch.tensor([1.5])).std() < noise.std() * 0.6


def test_ema_is_validated_saved_and_resumed(gtsrb_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ema"
    train_classifier(_cfg(gtsrb_dir, out, epochs=1, ema=0.9), log=lambda s: None)
    best, last, last_ema = (_load(out / f"{t}.safetensors") for t in ("best", "last", "last_ema"))
    assert any(not torch.equal(last[k], last_ema[k]) for k in last if last[k].is_floating_point())
    assert all(torch.equal(best[k], last_ema[k]) for k in best)  # the EMA is what gets validated and kept
    with pytest.raises(Exception, match="ema decay must be in"):
        train_classifier(_cfg(gtsrb_dir, tmp_path / "bad", ema=1.5), log=lambda s: None)


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _prior_cfg(data: Path, out: Path, **kw: object):  # type: ignore[no-untyped-def]
    from edgepure.training.prior import PriorConfig

    base = dict(data=str(data), out=str(out), model="edm_unet_xs", epochs=2, batch_size=8, val_fraction=0.25,
                val_n=8, warmup_steps=2)
    base.update(kw)
    return PriorConfig(**base)  # type: ignore[arg-type]


def test_prior_training_learns_resumes_exactly_and_refuses_other_settings(gtsrb_dir: Path, tmp_path: Path) -> None:
    from edgepure.models.registry import create_prior, load_weights_file
    from edgepure.training.prior import train_prior

    full = train_prior(_prior_cfg(gtsrb_dir, tmp_path / "full"), log=lambda s: None)
    h = full["history"]
    assert len(h) == 2 and set(h[0]) >= {"mse@0.1", "mse@0.5", "train_loss"} and full["kind"] == "prior"
    assert full["best_val_mse"] == min(e["mse@0.5"] for e in h)

    def crash_after_first_epoch(msg: str) -> None:
        if msg.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_prior(_prior_cfg(gtsrb_dir, tmp_path / "cut"), log=crash_after_first_epoch)
    train_prior(_prior_cfg(gtsrb_dir, tmp_path / "cut"), resume=True, log=lambda s: None)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    prior = create_prior("edm_unet_xs")
    load_weights_file(prior, tmp_path / "full" / "best.safetensors")  # the best checkpoint loads as a prior
    with pytest.raises(ModelError, match="trained with seed=0, asked to resume with 3"):
        train_prior(_prior_cfg(gtsrb_dir, tmp_path / "full", seed=3), resume=True, log=lambda s: None)


def test_corrupt_batch_corrupts_the_chosen_share_within_its_budget() -> None:
    from edgepure.training.prior import CORRUPT_PX, CORRUPT_SIGMA, corrupt_batch, corrupted_sigmas

    from edgepure.training.prior import CORRUPT_EPS

    eps_max = CORRUPT_EPS[1]
    y = torch.zeros(400, 3, 32, 32)
    none, picked = corrupt_batch(y, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(none, y) and not picked.any()
    out, picked = corrupt_batch(y, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(out, corrupt_batch(y, 0.5, torch.Generator().manual_seed(0))[0])  # seeded
    changed = (out != y).flatten(1).any(1)
    assert torch.equal(changed, picked)
    s = corrupted_sigmas(1000, torch.Generator().manual_seed(0))
    assert CORRUPT_SIGMA[0] <= float(s.min()) and float(s.max()) <= CORRUPT_SIGMA[1] and float(s.median()) < 0.2
    assert 0.4 < changed.float().mean() < 0.6
    assert out.min() >= -1 and out.max() <= 1
    # every corrupted image has a patch (a rectangle of large changes within the size range) or only a small
    # additive pattern (|change| ≤ 2ε in [−1, 1] units) everywhere
    for img in out[changed]:
        big = img.abs().amax(0) > 2 * eps_max + 1e-6
        if big.any():
            rows, cols = big.any(1).nonzero().flatten(), big.any(0).nonzero().flatten()
            assert int(rows[-1] - rows[0]) + 1 <= CORRUPT_PX[1] and int(cols[-1] - cols[0]) + 1 <= CORRUPT_PX[1]
    small = [img for img in out[changed] if float(img.abs().max()) <= 2 * eps_max + 1e-6]
    assert small, "some images carry only the additive pattern"


def test_warp_batch_warps_the_chosen_share_smoothly_within_its_budget() -> None:
    from edgepure.training.prior import WARP_PX, warp_batch

    # a horizontal ramp: a warp moves each pixel's value by its x displacement (in ramp units), so the change
    # reads the flow's x component back
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(200, 3, 32, 32).contiguous()
    none, picked = warp_batch(ramp, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(none, ramp) and not picked.any()
    out, picked = warp_batch(ramp, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(out, warp_batch(ramp, 0.5, torch.Generator().manual_seed(0))[0])  # seeded
    assert 0.35 < picked.float().mean() < 0.65
    assert torch.equal(out[~picked], ramp[~picked])
    dx = (out - ramp)[:, 0, 1:-1, 1:-1] / (2 / 31)  # pixels, away from the border padding
    assert float(dx[picked].abs().amax(dim=(1, 2)).min()) > 0.05  # every picked image moved
    assert float(dx.abs().max()) <= WARP_PX[1] + 1e-4  # never beyond the peak displacement
    # smooth: neighbouring displacements differ far less than the displacements themselves
    assert float((dx[picked, :, 1:] - dx[picked, :, :-1]).abs().mean()) < 0.3 * float(dx[picked].abs().mean())


def test_prior_training_with_warped_inputs_validates_the_unwarping(gtsrb_dir: Path, tmp_path: Path) -> None:
    from edgepure.training.prior import train_prior

    rec = train_prior(_prior_cfg(gtsrb_dir, tmp_path / "w", epochs=1, corrupt_warp=0.5), log=lambda s: None)
    entry = rec["history"][0]
    assert {"unwarp@0.1", "mix"} <= set(entry) and "restore@0.1" not in entry
    assert rec["best_val_mse"] == entry["mix"] == pytest.approx((entry["mse@0.5"] + entry["unwarp@0.1"]) / 2)


def test_prior_fine_tuning_starts_from_init_and_checkpoints_load_as_priors(gtsrb_dir: Path, tmp_path: Path) -> None:
    from edgepure import create_purifier
    from edgepure.models.loading import resolve_prior
    from edgepure.training.prior import train_prior

    base = train_prior(_prior_cfg(gtsrb_dir, tmp_path / "base", epochs=1), log=lambda s: None)
    assert "restore@0.1" not in base["history"][0]
    tuned = train_prior(_prior_cfg(gtsrb_dir, tmp_path / "tuned", epochs=1, max_steps=1, lr=1e-12,
                                   init=str(tmp_path / "base"), corrupt=0.5), log=lambda s: None)
    entry = tuned["history"][0]
    assert {"restore@0.1", "restore@0.5", "mix"} <= set(entry) and tuned["best_val_mse"] == entry["mix"]
    # lr ≈ 0: the run starts from (and stays at) the init weights
    assert entry["mse@0.5"] == pytest.approx(base["history"][0]["mse@0.5"], rel=1e-4)
    prior = resolve_prior(str(tmp_path / "tuned"))
    assert prior.edgepure_source.endswith("best.safetensors")
    pur = create_purifier("nappure", kind="additive", steps=1, prior=str(tmp_path / "tuned"))
    assert pur.config()["prior"] == prior.edgepure_source  # the manifest names the checkpoint
    with pytest.raises(ModelError, match="checkpoint not found"):
        resolve_prior(str(tmp_path / "nowhere.safetensors"))
    with pytest.raises(ConfigError, match="it is a edm_unet_xs, the run trains a edm_unet_s"):
        train_prior(_prior_cfg(gtsrb_dir, tmp_path / "x", model="edm_unet_s", init=str(tmp_path / "base")),
                    log=lambda s: None)
    with pytest.raises(ConfigError, match="corrupt, corrupt_warp and adversarial must be shares"):
        train_prior(_prior_cfg(gtsrb_dir, tmp_path / "y", corrupt=1.5), log=lambda s: None)
    with pytest.raises(ConfigError, match="got 0.0, -0.1 and 0.0"):
        train_prior(_prior_cfg(gtsrb_dir, tmp_path / "y", corrupt_warp=-0.1), log=lambda s: None)
    with pytest.raises(ConfigError, match="adv_steps must be ≥ 1, got 0"):
        train_prior(_prior_cfg(gtsrb_dir, tmp_path / "z", adversarial=0.5, adv_steps=0), log=lambda s: None)
    with pytest.raises(ConfigError, match="adv_additive must be a share in \\[0, 1\\], got 1.5"):
        train_prior(_prior_cfg(gtsrb_dir, tmp_path / "w", adversarial=0.5, adv_additive=1.5), log=lambda s: None)
    with pytest.raises(ConfigError, match="adv_sigma_max must be in \\(0.01, 1\\], got 0.005"):
        train_prior(_prior_cfg(gtsrb_dir, tmp_path / "v", adversarial=0.5, adv_sigma_max=0.005), log=lambda s: None)


def test_adversarial_batch_attacks_the_classifier_within_the_protocol_budgets() -> None:
    from edgepure import load_classifier
    from edgepure.training.prior import adversarial_batch

    classifier = load_classifier().eval()
    x = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = classifier(x).argmax(1)
    y = x * 2 - 1
    adv = adversarial_batch(y, labels, classifier, 3, torch.Generator().manual_seed(1))
    assert torch.equal(adv, adversarial_batch(y, labels, classifier, 3, torch.Generator().manual_seed(1)))
    assert adv.shape == y.shape and adv.min() >= -1 and adv.max() <= 1
    delta = (adv - y).abs()
    patch, additive = delta[:12], delta[12:]
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[11:21, 11:21] = False  # the 7×7 centred patch (soft edges) and a pixel around it
    assert float(patch[..., outside].max()) == 0 and float(patch.amax()) > 0.5
    assert float(additive.max()) <= 2 * 24 / 255 + 1e-5 and float(additive.mean()) > 0.02
    with torch.no_grad():
        fooled = classifier((adv + 1) / 2).argmax(1) != labels
    assert fooled[12:].float().mean() > 0.5  # random images under 24/255 noise: the attack works
    # their noise levels: log-uniform from 0.01, up to 1 by default or to the cap given
    from edgepure.training.prior import corrupted_sigmas

    low = corrupted_sigmas(4096, torch.Generator().manual_seed(0), 0.1)
    full = corrupted_sigmas(4096, torch.Generator().manual_seed(0))
    assert float(low.min()) >= 0.01 and float(low.max()) <= 0.1 and float(full.max()) > 0.5
    assert abs(float(low.log().mean()) - (math.log(0.01) + math.log(0.1)) / 2) < 0.05  # log-uniform: mean of the logs
    # the mix of the two families: all additive, all patch, and a quarter patch
    for share, n_patch in ((1.0, 0), (0.0, 24), (0.75, 6)):
        d = (adversarial_batch(y, labels, classifier, 1, torch.Generator().manual_seed(1), share) - y).abs()
        patch_only = d[..., outside].flatten(1).amax(1) == 0
        assert patch_only.tolist() == [True] * n_patch + [False] * (24 - n_patch)


def test_prior_training_with_adversarial_inputs_validates_on_attacked_images(gtsrb_dir: Path, tmp_path: Path) -> None:
    from edgepure.training.prior import train_prior

    rec = train_prior(_prior_cfg(gtsrb_dir, tmp_path / "adv", epochs=1, max_steps=2, adversarial=0.5, adv_steps=1),
                      log=lambda s: None)
    entry = rec["history"][0]
    assert {"adversarial@0.1", "mix"} <= set(entry) and "restore@0.1" not in entry
    assert entry["mix"] == pytest.approx((entry["mse@0.5"] + entry["adversarial@0.1"]) / 2)
    assert rec["config"]["adversarial"] == 0.5
    assert 0 <= entry["adversarial_accuracy@0.1"] <= 1 and 0 <= entry["accuracy@0.1"] <= 1
    # the classifier-feature term: same run with it adds to the training loss
    guided = train_prior(_prior_cfg(gtsrb_dir, tmp_path / "guided", epochs=1, max_steps=2, adversarial=0.5,
                                    adv_steps=1, feature_weight=5.0), log=lambda s: None)
    assert guided["history"][0]["train_loss"] > entry["train_loss"] + 0.1
    with pytest.raises(ConfigError, match="feature_weight must be ≥ 0"):
        train_prior(_prior_cfg(gtsrb_dir, tmp_path / "neg", feature_weight=-1.0), log=lambda s: None)


def test_prior_training_takes_adversarial_inputs_from_a_cached_blind_pool(gtsrb_dir: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    import edgepure.training.prior as prior_mod
    from edgepure.training.prior import train_prior

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    inner = prior_mod._edm_loss_and_output

    def spy(model, y, sigma, noise, observed, weight_sigma):  # type: ignore[no-untyped-def]
        seen.append((y.detach().clone(), observed.detach().clone()))
        return inner(model, y, sigma, noise, observed, weight_sigma)

    monkeypatch.setattr(prior_mod, "_edm_loss_and_output", spy)
    cache = tmp_path / "cache"
    logs: list[str] = []
    cfg = dict(epochs=1, max_steps=2, adversarial=1.0, adv_pool=4, adv_pool_steps=2, adv_cache=str(cache), shift=0)
    rec = train_prior(_prior_cfg(gtsrb_dir, tmp_path / "pool", **cfg), log=logs.append)
    files = sorted(cache.glob("blind-*.npy"))
    assert len(files) == 4  # pool and validation set, each one patch and one additive run
    assert sum(m.startswith("blind ") for m in logs) == 4
    assert "adversarial@0.1" in rec["history"][0]
    # every input was one of the pool's blind examples, its target the clean image under it
    pool = [a * 2 - 1 for f in files for a in torch.from_numpy(np.load(f)) if len(np.load(f, mmap_mode="r")) == 2]
    assert len(pool) == 4  # the pool's halves: 2 patched, 2 noised (the validation set has 8 images)
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[11:21, 11:21] = False
    assert seen and all(len(y) == 8 for y, _ in seen)
    for y, observed in seen:
        for target, obs in zip(y, observed):
            assert any(torch.allclose(obs, a, atol=1e-6) for a in pool)
            d = (obs - target).abs()
            assert float(d.amax()) > 0
            if float(d[..., outside].amax()) > 0:  # additive noise: within the protocol's L∞ budget everywhere
                assert float(d.amax()) <= 2 * 24 / 255 + 1e-5
    # a second run reuses the cached examples and, seeded, trains the same weights
    logs2: list[str] = []
    again = train_prior(_prior_cfg(gtsrb_dir, tmp_path / "pool2", **cfg), log=logs2.append)
    assert not any(m.startswith("blind ") for m in logs2)
    assert again["history"][0]["train_loss"] == rec["history"][0]["train_loss"]
    a, b = _load(tmp_path / "pool" / "last.safetensors"), _load(tmp_path / "pool2" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # half from the pool, half PGD on the fly (which the pool does not hold); the validation set attacked by both
    seen.clear()
    mixed = train_prior(_prior_cfg(gtsrb_dir, tmp_path / "mixed", **{**cfg, "adv_pool_share": 0.5, "adv_steps": 1}),
                        log=lambda s: None)
    from_pool = [any(torch.allclose(obs, a, atol=1e-6) for a in pool) for _, observed in seen for obs in observed]
    assert 0 < sum(from_pool) < len(from_pool)
    assert mixed["history"][0]["adversarial@0.1"] != rec["history"][0]["adversarial@0.1"]
    # a PGD pool: the same images attacked by eval robust's PGD (its own cache entries), inputs from it
    seen.clear()
    logs3: list[str] = []
    train_prior(_prior_cfg(gtsrb_dir, tmp_path / "pgd", **{**cfg, "adv_pool_method": "pgd"}), log=logs3.append)
    assert len(sorted(cache.glob("blind-*.npy"))) == 8 and sum("(pgd 2)" in m for m in logs3) == 4
    pgd_pool = [a * 2 - 1 for f in sorted(set(cache.glob("blind-*.npy")) - set(files)) for a in torch.from_numpy(np.load(f))
                if len(np.load(f, mmap_mode="r")) == 2]
    assert seen and all(any(torch.allclose(obs, a, atol=1e-6) for a in pgd_pool) for _, o in seen for obs in o)
    # both pools at once: every input one of either attack's examples, both attacks used
    seen.clear()
    train_prior(_prior_cfg(gtsrb_dir, tmp_path / "both", **{**cfg, "adv_pool_method": "apgd,pgd", "max_steps": 4}),
                log=lambda s: None)
    apgd_pool = pool
    hits = [(any(torch.allclose(obs, a, atol=1e-6) for a in apgd_pool), any(torch.allclose(obs, a, atol=1e-6) for a in pgd_pool))
            for _, o in seen for obs in o]
    assert all(x or y for x, y in hits) and any(x and not y for x, y in hits) and any(y and not x for x, y in hits)
    for bad in ("fgsm", "apgd:0", "pgd:x", "apgd,apgd:20"):
        with pytest.raises(ConfigError, match="adv_pool_method"):
            train_prior(_prior_cfg(gtsrb_dir, tmp_path / "n4", adversarial=0.5, adv_pool=4, adv_pool_method=bad),
                        log=lambda s: None)
    with pytest.raises(ConfigError, match="adv_pool_share must be a share in \\[0, 1\\] and adv_pool_steps ≥ 1"):
        train_prior(_prior_cfg(gtsrb_dir, tmp_path / "n0", adversarial=0.5, adv_pool=4, adv_pool_share=2.0),
                    log=lambda s: None)
    with pytest.raises(ConfigError, match="adv_pool needs adversarial > 0"):
        train_prior(_prior_cfg(gtsrb_dir, tmp_path / "n1", adv_pool=4), log=lambda s: None)
    with pytest.raises(ConfigError, match="adv_pool must be ≥ 0 images, got -1"):
        train_prior(_prior_cfg(gtsrb_dir, tmp_path / "n2", adversarial=0.5, adv_pool=-1), log=lambda s: None)
    with pytest.raises(ConfigError, match="adv_pool asks for 100000 images, the training split has"):
        train_prior(_prior_cfg(gtsrb_dir, tmp_path / "n3", adversarial=0.5, adv_pool=100000), log=lambda s: None)


def test_denoise_batch_replaces_the_chosen_share_with_the_priors_output() -> None:
    from edgepure.models.registry import create_prior
    from edgepure.training.classifier import denoise_batch

    torch.manual_seed(0)
    prior = create_prior("edm_unet_xs", pretrained=False).eval()
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = denoise_batch(x, prior, 0.5, 0.25, 1.2, torch.Generator().manual_seed(2))
        again = denoise_batch(x, prior, 0.5, 0.25, 1.2, torch.Generator().manual_seed(2))
        none = denoise_batch(x, prior, 0.0, 0.25, 1.2, torch.Generator().manual_seed(2))
    changed = (out - x).flatten(1).abs().amax(1) > 0
    assert 16 <= int(changed.sum()) <= 48  # about half, from the generator
    assert torch.equal(out, again) and torch.equal(none, x)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_fine_tuning_starts_from_the_given_weights(gtsrb_dir: Path, tmp_path: Path) -> None:
    from edgepure.runtime.errors import ConfigError

    train_classifier(_cfg(gtsrb_dir, tmp_path / "a", max_steps=2), log=lambda s: None)
    # lr 0: the fine-tuned run must hold exactly the weights it started from, not a fresh initialisation
    train_classifier(_cfg(gtsrb_dir, tmp_path / "b", max_steps=1, lr=0.0, seed=5, init=str(tmp_path / "a" / "best.safetensors"),
                          denoise=0.5), log=lambda s: None)
    got = _weights(tmp_path / "b")
    best = resolve_classifier(str(tmp_path / "a")).state_dict()
    assert all(torch.equal(got[k], best[k]) for k in got if got[k].is_floating_point() and "running" not in k)
    with pytest.raises(ConfigError, match="signnet_s"):
        train_classifier(_cfg(gtsrb_dir, tmp_path / "c", max_steps=1, model="signnet_s", init=str(tmp_path / "a")),
                         log=lambda s: None)


def test_cutmix_pastes_one_box_from_the_partner_and_reports_its_area() -> None:
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 3, 32, 32).clone()  # image i is all i
    mixed, partner, share = cutmix_batch(x, 1.0, torch.Generator().manual_seed(3))
    assert partner is not None and sorted(partner.tolist()) == list(range(6))
    again = cutmix_batch(x, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(mixed, again[0]) and torch.equal(partner, again[1])  # type: ignore[arg-type]
    for i in range(6):
        from_partner = (mixed[i] == partner[i]).all(dim=0)
        kept = (mixed[i] == i).all(dim=0)
        if int(partner[i]) != i:
            assert bool((from_partner | kept).all())  # every pixel is one of the two images
            rows, cols = from_partner.any(dim=1).nonzero(), from_partner.any(dim=0).nonzero()
            box = (int(rows.max()) - int(rows.min()) + 1) * (int(cols.max()) - int(cols.min()) + 1)
            assert int(from_partner.sum()) == box and box / 1024 == pytest.approx(share)  # one rectangle, that area
    assert 0 < share < 1
    g = torch.Generator().manual_seed(3)
    same, none, zero = cutmix_batch(x, 0.0, g)
    assert same is x and none is None and zero == 0.0
    assert torch.equal(torch.rand(1, generator=g), torch.rand(1, generator=torch.Generator().manual_seed(3)))  # no draw


def test_cutmix_training_runs_and_bad_probabilities_are_refused(gtsrb_dir: Path, tmp_path: Path) -> None:
    train_classifier(_cfg(gtsrb_dir, tmp_path / "a", max_steps=2, cutmix=1.0), log=lambda s: None)
    train_classifier(_cfg(gtsrb_dir, tmp_path / "b", max_steps=2), log=lambda s: None)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())  # the mixing changed the steps
    with pytest.raises(ConfigError, match="cutmix must be a probability in \\[0, 1\\], got 1.5"):
        train_classifier(_cfg(gtsrb_dir, tmp_path / "bad", cutmix=1.5), log=lambda s: None)
    assert not (tmp_path / "bad").exists()


def test_bad_denoise_settings_are_refused_before_anything_is_written(gtsrb_dir: Path, tmp_path: Path) -> None:
    from edgepure.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="denoise_low"):
        train_classifier(_cfg(gtsrb_dir, tmp_path / "bad", denoise=0.5, denoise_low=0.8, denoise_high=0.2), log=lambda s: None)
    assert not (tmp_path / "bad").exists()


def test_on_device_moves_arguments_and_results_and_keeps_gradients() -> None:
    from edgepure.models.loading import OnDevice, on_device
    from edgepure.models.registry import create_classifier

    net = create_classifier("signnet_xs").eval()
    assert on_device(net, "cpu") is net  # the CPU path is the module itself: CPU runs are unchanged
    wrapped = OnDevice(net, torch.device("cpu"))
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = wrapped(x)
    assert torch.equal(out, net(x))
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0  # the gradient reaches the caller's tensor
    feats = wrapped.stage_features(x)  # methods are wrapped too (the prior trainer's feature loss calls this)
    assert isinstance(feats, list) and all(torch.equal(a, b) for a, b in zip(feats, net.stage_features(x)))
    assert wrapped.num_classes == 43 and wrapped.inner is net
    assert list(wrapped.state_dict()) == ["inner." + k for k in net.state_dict()]


def test_the_shared_schedule_warms_up_then_decays_and_the_ema_ramps_up() -> None:
    from edgepure.training.common import ema_copy, ema_update, lr_at

    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1) and lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5) and lr_at(100, 100, 10, 1.0) == pytest.approx(0.0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert ema_copy(model, 0.0) is None
    ema = ema_copy(model, 0.99)
    assert ema is not None and not ema.training and not any(p.requires_grad for p in ema.parameters())
    before = ema[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
    ema_update(ema, model, 0.99, step=0)  # the first step's decay is 1/10, not 0.99: the initialisation fades fast
    assert torch.allclose(ema[0].weight, 0.1 * before + 0.9 * model[0].weight)
    assert torch.equal(ema[1].running_mean, model[1].running_mean)  # buffers are copied, not averaged


def test_training_modules_import_no_private_helper_of_another_module() -> None:
    import ast

    import edgepure.training

    for path in sorted(Path(edgepure.training.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgepure"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_runs_and_saves_cpu_loadable_checkpoints(gtsrb_dir: Path, tmp_path: Path) -> None:
    from edgepure.models.registry import create_prior, load_weights_file
    from edgepure.training.prior import train_prior

    rec = train_classifier(_cfg(gtsrb_dir, tmp_path / "c", max_steps=2), log=lambda s: None, device="cuda")
    assert 0 <= rec["history"][0]["val_accuracy"] <= 1
    assert resolve_classifier(str(tmp_path / "c"))(torch.rand(1, 3, 32, 32)).shape == (1, 43)
    rec = train_prior(_prior_cfg(gtsrb_dir, tmp_path / "p", epochs=1, max_steps=2, adversarial=0.5, adv_steps=1,
                                 feature_weight=1.0), log=lambda s: None, device="cuda")
    assert {"adversarial@0.1", "mix"} <= set(rec["history"][0])
    load_weights_file(create_prior("edm_unet_xs"), tmp_path / "p" / "best.safetensors")
    from edgepure.training.impure import ImpureConfig, train_impure

    rec = train_impure(ImpureConfig(data=str(gtsrb_dir), out=str(tmp_path / "i"), model="impure_xs", epochs=1,
                                    batch_size=10, val_n=8, max_steps=2), log=lambda s: None, device="cuda")
    assert 0 <= rec["history"][0]["val_accuracy"] <= 1
