"""Learning NAPPure's step sizes, λ and σ₀ through the unrolled steps: the per-step schedule, the hyper-parameter
override, the settings file it writes and reads back, the resumable training run and the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import edgepure
import edgepure.training.nappure as tune
from edgepure.cli.main import app
from edgepure.data import open_dataset
from edgepure.purifiers.nappure import NAPPure
from edgepure.runtime.errors import ConfigError

runner = CliRunner()


def _tiny(kind: str = "joint", steps: int = 3, **kw: object) -> NAPPure:
    torch.manual_seed(0)
    return edgepure.create_purifier("nappure", kind=kind, steps=steps, prior="edm_unet_xs", pretrained=False,
                                    **kw)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def signs() -> torch.Tensor:
    return torch.from_numpy(open_dataset("synth", "val", n=3, seed=2).as_float_nchw())


def test_step_sizes_are_the_schedule_times_the_per_step_scale() -> None:
    pur = _tiny("joint", steps=4)
    cos = [0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert pur.step_sizes("x") == pytest.approx([0.03 * c for c in cos])
    assert pur.step_sizes("mask") == pytest.approx([0.5 * c for c in cos])
    scaled = _tiny("joint", steps=4, step_scale={"x": [1, 2, 0, 1], "w": [3, 3, 3, 3]})
    assert scaled.step_sizes("x") == pytest.approx([0.03 * c * s for c, s in zip(cos, [1, 2, 0, 1])])
    assert scaled.step_sizes("w") == pytest.approx([0.3 * c for c in cos])
    assert scaled.step_sizes("flow") == pur.step_sizes("flow")  # a group left out keeps its schedule
    assert pur.step_group("mask.logits") == "mask" and pur.step_group("flow.w") == "w"
    assert _tiny("blur", steps=2).step_group("kernel") == "conv"


@pytest.mark.parametrize("bad", [{"x": [1.0, 1.0]}, {"x": [1.0, -1.0, 1.0]}, {"rain": [1.0, 1.0, 1.0]},
                                 {"x": [1.0, float("nan"), 1.0]}])
def test_a_bad_step_scale_is_a_user_error(bad: dict) -> None:
    with pytest.raises(ConfigError, match="step_scale"):
        _tiny("joint", steps=3, step_scale=bad)


def test_the_hyper_parameters_get_gradients_and_their_settings_reproduce_the_run(signs: torch.Tensor) -> None:
    pur = _tiny("joint", steps=3)
    noise = pur.sample_noise(signs, torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = pur(signs, noise)
    start = tune._start(pur, signs)
    assert set(start) == {"lr.x", "lr.mask", "lr.flow", "lr.conv", "lr.additive", "lr.w", "lam2", "lam1.mask",
                          "lam1.flow", "lam1.conv", "lam1.additive", "init_sigma"}
    logs = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    pur.hyper = {k: v.exp().float() for k, v in logs.items()}
    out = pur(signs, noise)
    assert torch.allclose(out, plain, atol=1e-5)  # the starting point is the configured purifier
    out.square().sum().backward()
    for k in ("lr.x", "lam2", "lam1.mask", "init_sigma"):
        assert logs[k].grad is not None and torch.isfinite(logs[k].grad).all() and logs[k].grad.abs().sum() > 0, k
    assert logs["lr.mask"].grad[-1] == 0  # the last θ step never reaches the image
    # move every value, write the settings, rebuild the purifier from them: the same run
    g = torch.Generator().manual_seed(1)
    moved = {k: (v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype)).detach() for k, v in start.items()}
    pur.hyper = {k: v.exp().float() for k, v in moved.items()}
    with torch.no_grad():
        learned = pur(signs, noise)
    hyper = pur.hyper
    settings = tune.learned_settings(pur, moved)
    assert pur.hyper is hyper and set(settings) == {"lam1", "lam2", "init_sigma", "step_scale"}
    pur.hyper = None
    again = _tiny("joint", steps=3, **settings)
    with torch.no_grad():
        assert torch.allclose(again(signs, noise), learned, atol=1e-4)
    assert not torch.allclose(learned, plain, atol=1e-3)


def _settings_file(path: Path, kind: str = "additive", steps: int = 2, **settings: object) -> Path:
    path.write_text(json.dumps({"kind": kind, "steps": steps, "iter": 1, "settings": settings}))
    return path


def test_tuned_settings_files_load_and_mismatches_are_user_errors(tmp_path: Path) -> None:
    good = _settings_file(tmp_path / "s.json", lam2=5.0, init_sigma=0.3, step_scale={"x": [1.0, 0.5]})
    pur = _tiny("additive", steps=2, tuned=str(good))
    assert pur.cfg.lam2 == 5.0 and pur.cfg.init_sigma == 0.3 and pur.cfg.step_scale == {"x": [1.0, 0.5]}
    assert _tiny("additive", steps=2, tuned=str(good), lam2=1.0).cfg.lam2 == 1.0  # keywords win
    with pytest.raises(ConfigError, match="does not exist"):
        _tiny("additive", steps=2, tuned=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="learned for kind 'additive' at K = 2"):
        _tiny("additive", steps=4, tuned=str(good))
    with pytest.raises(ConfigError, match="learned for kind 'additive'"):
        _tiny("blur", steps=2, tuned=str(good))
    with pytest.raises(ConfigError, match="lr_x"):
        _tiny("additive", steps=2, tuned=str(_settings_file(tmp_path / "x.json", lr_x=1.0)))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a JSON settings file"):
        _tiny("additive", steps=2, tuned=str(tmp_path / "bad.json"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold"):
        _tiny("additive", steps=2, tuned=str(tmp_path / "list.json"))


def _cfg(data: Path, out: Path, iters: int) -> tune.NAPPureTuneConfig:
    return tune.NAPPureTuneConfig(data=str(data), out=str(out), kind="joint", steps=2, n=4, attacks=("patch", "additive"),
                                  attack_steps=2, iters=iters, batch_size=2, lr=0.1, snapshot_every=2)


def test_a_tuning_run_learns_resumes_exactly_and_refuses_to_overwrite(gtsrb_dir: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tune, "_purifier", lambda cfg: _tiny(cfg.kind, cfg.steps))
    full = tune.tune_nappure(_cfg(gtsrb_dir, tmp_path / "full", 3), log=lambda s: None)
    assert full["kind"] == "joint" and full["steps"] == 2 and full["iter"] == 3
    s = full["settings"]
    assert len(s["step_scale"]["x"]) == 2 and any(abs(v - 1) > 1e-4 for v in s["step_scale"]["x"])
    assert all(0.25 - 1e-9 <= v <= 4 + 1e-9 for v in s["step_scale"]["x"])  # within max_scale of the start
    assert sorted(p.name for p in (tmp_path / "full").glob("settings-*.json")) == ["settings-0002.json"]
    assert json.loads((tmp_path / "full" / "settings-0002.json").read_text())["iter"] == 2
    state = json.loads((tmp_path / "full" / "state.json").read_text())
    assert [h["iter"] for h in state["history"]] == [1, 2, 3]
    assert set(state["history"][0]["accuracy"]) == {"clean", "patch", "additive"}

    part = tune.tune_nappure(_cfg(gtsrb_dir, tmp_path / "cut", 2), log=lambda s: None)
    assert part["iter"] == 2
    with pytest.raises(ConfigError, match="--resume"):
        tune.tune_nappure(_cfg(gtsrb_dir, tmp_path / "cut", 3), log=lambda s: None)
    with pytest.raises(ConfigError, match="other settings"):
        tune.tune_nappure(tune.NAPPureTuneConfig(**{**_cfg(gtsrb_dir, tmp_path / "cut", 3).__dict__, "lr": 0.2}),
                          resume=True, log=lambda s: None)
    resumed = tune.tune_nappure(_cfg(gtsrb_dir, tmp_path / "cut", 3), resume=True, log=lambda s: None)
    assert resumed == full  # the adversarial examples came from the cache and every step repeated exactly


def test_train_nappure_cli(gtsrb_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "nappure", "--data", str(gtsrb_dir), "--out", str(out), "--kind", "additive",
                            "--steps", "1", "--n", "2", "--attack", "additive", "--attack-steps", "2", "--iters", "1",
                            "--batch-size", "1", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["kind"] == "additive" and set(result["settings"]["step_scale"]) == {"x", "additive"}
    pur = edgepure.create_purifier("nappure", kind="additive", steps=1, tuned=str(out / "settings.json"))
    assert pur.cfg.step_scale == result["settings"]["step_scale"]
    r = runner.invoke(app, ["train", "nappure", "--data", str(gtsrb_dir), "--out", str(tmp_path / "r2"),
                            "--attack", "rain"])
    assert r.exit_code == 1 and "unknown attack" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["train", "nappure", "--data", str(gtsrb_dir), "--out", str(tmp_path / "r3"),
                            "--kind", "rain"])
    assert r.exit_code == 1 and "unknown kind" in r.output


def test_the_adam_direction_keeps_its_value_and_softens_only_its_derivative() -> None:
    from edgepure.purifiers.nappure import _adam_direction

    g = torch.tensor([1e-9, 1e-6, 0.5], requires_grad=True)
    m, v = 0.1 * g, 0.001 * g * g
    exact = _adam_direction(m, v, 1e-16, None)
    soft = _adam_direction(m, v, 1e-16, 1e-6)
    assert torch.equal(soft.detach(), exact.detach())
    (d_exact,) = torch.autograd.grad(exact.sum(), g, retain_graph=True)
    (d_soft,) = torch.autograd.grad(soft.sum(), g)
    # below the backward ε the derivative is m/ε_b's (0.1/1e-3 = 100), not 1e7; above it, the exact one (0)
    assert d_exact[0] > 1e6 and d_soft[0] == pytest.approx(100.0, rel=1e-4) and d_soft[2] == pytest.approx(d_exact[2])


def test_gradients_through_the_steps_stay_finite_where_a_coordinate_gets_no_gradient(signs: torch.Tensor) -> None:
    pur = _tiny("joint", steps=4)
    x = signs.clone()
    x[:, :, 8:24, 8:24] = 1.0  # a flat white patch: δ and the mask see (almost) no gradient there
    x.requires_grad_(True)
    out = pur(x, pur.sample_noise(x, torch.Generator().manual_seed(3)))
    (g,) = torch.autograd.grad(out.square().sum(), x)
    assert torch.isfinite(g).all() and float(g.abs().max()) < 1e6


def test_shipped_settings_are_the_default_where_there_are_any(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgepure.purifiers.nappure as nappure

    monkeypatch.setattr(nappure, "TUNED_DIR", tmp_path)
    _settings_file(tmp_path / "nappure-additive-k2.json", lam2=7.0, step_scale={"x": [2.0, 1.0]})
    pur = _tiny("additive", steps=2)
    assert pur.cfg.lam2 == 7.0 and pur.config()["tuned"] == "shipped:nappure-additive-k2.json"
    assert pur.step_sizes("x")[0] == pytest.approx(2 * _tiny("additive", steps=2, tuned="none").step_sizes("x")[0])
    hand = _tiny("additive", steps=2, tuned="none")
    assert hand.cfg.lam2 == 3.0 and hand.config()["tuned"] is None
    other_k = _tiny("additive", steps=3)  # nothing shipped for K = 3: the hand-set settings
    assert other_k.cfg.lam2 == 3.0 and other_k.config()["tuned"] is None
    with pytest.raises(ConfigError, match="fixed mode"):
        _tiny("additive", steps=2, mode="reference", tuned=str(tmp_path / "nappure-additive-k2.json"))


def test_a_purifier_rebuilds_from_its_config_without_the_settings_file(tmp_path: Path) -> None:
    path = _settings_file(tmp_path / "s.json", lam2=5.0, init_sigma=0.3, step_scale={"x": [1.0, 0.5]})
    pur = _tiny("additive", steps=2, tuned=str(path))
    path.unlink()  # an exported model's manifest travels without it
    cfg = {k: v for k, v in pur.config().items() if k != "prior"}
    twin = edgepure.create_purifier("nappure", prior="edm_unet_xs", pretrained=False, **cfg)
    assert twin.config() == pur.config() and twin.config()["tuned"] == str(path)
    shipped = edgepure.create_purifier("nappure", kind="occlusion", steps=16, prior="edm_unet_xs", pretrained=False)
    assert shipped.config()["tuned"] == "shipped:nappure-occlusion-k16.json"
    again = edgepure.create_purifier("nappure", prior="edm_unet_xs", pretrained=False,
                                     **{k: v for k, v in shipped.config().items() if k != "prior"})
    assert again.config() == shipped.config()
    hand = _tiny("additive", steps=2, tuned=None)
    assert hand.config()["tuned"] is None and hand.cfg.lam2 == 3.0


def test_settings_of_a_purifier_with_a_step_scale_are_relative_to_the_schedule_alone(signs: torch.Tensor) -> None:
    given = {"lam2": 4.0, "init_sigma": 0.7, "step_scale": {"x": [2.0, 0.5, 1.0], "mask": [1.0, 3.0, 1.0]}}
    pur = _tiny("occlusion", steps=3, **given)
    s = tune.learned_settings(pur, tune._start(pur, signs))
    assert s["step_scale"]["x"] == pytest.approx([2.0, 0.5, 1.0]) and s["step_scale"]["mask"] == pytest.approx([1.0, 3.0, 1.0])
    assert s["lam2"] == pytest.approx(4.0) and s["init_sigma"] == pytest.approx(0.7)
    assert pur.cfg.step_scale == given["step_scale"]  # the purifier is left as it was


def test_the_restoration_prior_has_its_own_hand_set_settings_and_shipped_ones_follow_the_prior(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgepure.purifiers.nappure as nappure

    restore = edgepure.create_purifier("nappure", kind="occlusion", steps=16, prior=nappure.RESTORE_PRIOR,
                                       pretrained=False)
    plain = edgepure.create_purifier("nappure", kind="occlusion", steps=16, prior="edm_unet_s", pretrained=False,
                                     tuned="none")
    # the shipped K 16 occlusion settings were learned on top of edm_unet_s's hand-set ones: not applied here
    assert restore.config()["tuned"] is None and restore.config()["prior"] == nappure.RESTORE_PRIOR
    assert restore.cfg == nappure.fixed_config("occlusion", 16, nappure.RESTORE_PRIOR) != plain.cfg
    assert restore.cfg.init_sigma != plain.cfg.init_sigma
    learned = nappure.TUNED_DIR / "nappure-occlusion-k16.json"
    with pytest.raises(ConfigError, match="learned with the prior 'edm_unet_s'"):
        edgepure.create_purifier("nappure", kind="occlusion", steps=16, prior=nappure.RESTORE_PRIOR,
                                 pretrained=False, tuned=str(learned))
    # a file learned with the restoration prior applies to it, and is the shipped default only for it
    monkeypatch.setattr(nappure, "TUNED_DIR", tmp_path)
    path = tmp_path / "nappure-occlusion-k2.json"
    path.write_text(json.dumps({"kind": "occlusion", "steps": 2, "prior": nappure.RESTORE_PRIOR, "iter": 1,
                                "settings": {"lam2": 9.0}}))
    mine = edgepure.create_purifier("nappure", kind="occlusion", steps=2, prior=nappure.RESTORE_PRIOR, pretrained=False)
    other = edgepure.create_purifier("nappure", kind="occlusion", steps=2, prior="edm_unet_s", pretrained=False)
    assert mine.cfg.lam2 == 9.0 and mine.config()["tuned"] == "shipped:nappure-occlusion-k2.json"
    assert other.cfg.lam2 == 5.0 and other.config()["tuned"] is None
    # the kind's default prior: the guided prior where it ships, edm_unet_s in reference mode and elsewhere
    assert nappure.default_prior("distortion") == "edm_unet_s" and nappure.default_prior("occlusion", "reference") == "edm_unet_s"
    assert nappure.default_prior("occlusion") == nappure.default_prior("additive") == nappure.GUIDED_PRIOR
    # each prior its own hand-set table: the guided additive purifier starts at a small jump with a small image step
    guided = edgepure.create_purifier("nappure", kind="additive", steps=4, pretrained=False)
    assert guided.config()["prior"] == nappure.GUIDED_PRIOR and guided.cfg.init_sigma == 0.02
    assert guided.cfg == nappure.fixed_config("additive", 4, nappure.GUIDED_PRIOR) != nappure.fixed_config("additive", 4)
    assert nappure.fixed_config("joint", 8, nappure.GUIDED_PRIOR) == nappure.fixed_config("joint", 8)  # no table of its own
    # a file learned on the restoration prior's occlusion table is not applied to the guided prior's
    with pytest.raises(ConfigError, match="learned with the prior 'edm_unet_s_restore'"):
        edgepure.create_purifier("nappure", kind="occlusion", steps=2, prior=nappure.GUIDED_PRIOR, pretrained=False,
                                 tuned=str(path))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_tuning_run_on_cuda_learns_what_the_cpu_learns(gtsrb_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tune, "_purifier", lambda cfg: _tiny(cfg.kind, cfg.steps))
    cpu = tune.tune_nappure(_cfg(gtsrb_dir, tmp_path / "cpu", 2), log=lambda s: None)
    gpu = tune.tune_nappure(_cfg(gtsrb_dir, tmp_path / "gpu", 2), log=lambda s: None, device="cuda")
    a, b = cpu["settings"]["step_scale"]["x"], gpu["settings"]["step_scale"]["x"]
    assert a == pytest.approx(b, rel=0.05, abs=1e-3)  # same draws; examples equal up to float rounding
