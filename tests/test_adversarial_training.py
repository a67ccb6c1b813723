"""Adversarial training of classifiers (``train classifier --adversarial``): it works, is seeded and resumable."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import conftest
from edgepure.cli.main import app
from edgepure.models.loading import resolve_classifier
from edgepure.runtime.errors import ConfigError, ModelError
from edgepure.training.adversarial import Crafter, adversarial_loss, parse_families, pick_worst
from edgepure.training.classifier import TrainConfig, train_classifier

runner = CliRunner()


def _cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="signnet_xs", epochs=1, batch_size=8, val_fraction=0.25, lr=0.05)
    base.update(kw)
    return TrainConfig(**base)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "last.safetensors"))


def _quiet(msg: str) -> None:
    pass


def _robust_accuracy(run: Path, x: torch.Tensor, y: torch.Tensor, family: str) -> tuple[float, float]:
    """Clean and robust accuracy of a run's best weights under eval robust's attack (APGD-CE, 20 steps)."""
    from edgepure.attacks import APGD
    from edgepure.perturb import create_perturbation

    model = resolve_classifier(str(run)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x_adv = APGD(model, create_perturbation(family, "gtsrb"), steps=20, seed=1)(x, y)
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()), float((model(x_adv).argmax(1) == y).float().mean())


def test_adversarial_training_raises_robust_accuracy_on_held_out_images(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from edgepure.data import open_dataset

    monkeypatch.setattr(conftest, "FIXTURE_TRACKS", 8)  # 4 classes × 8 tracks × 4 frames: 96 training, 32 held out
    monkeypatch.setattr(conftest, "FIXTURE_FRAMES", 4)
    data = conftest.make_gtsrb(tmp_path / "data", with_test=False)
    held_out = open_dataset(str(data), "val", size=32, val_fraction=0.25)
    x = torch.from_numpy(held_out.images).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(held_out.labels)
    common = dict(epochs=12, batch_size=16, lr=0.02, augment=False, seed=0)
    train_classifier(_cfg(data, tmp_path / "std", **common), log=_quiet)
    train_classifier(_cfg(data, tmp_path / "at", adversarial="patch", adv_steps=2, **common), log=_quiet)
    clean_std, robust_std = _robust_accuracy(tmp_path / "std", x, y, "patch")
    clean_at, robust_at = _robust_accuracy(tmp_path / "at", x, y, "patch")
    assert clean_std >= 0.75 and robust_std <= 0.35  # the undefended model reads the signs and breaks
    assert robust_at >= robust_std + 0.15, (robust_std, robust_at)
    assert clean_at >= 0.75
    record = json.loads((tmp_path / "at" / "last.json").read_text())
    assert record["config"]["adversarial"] == "patch" and record["config"]["adv_steps"] == 2
    assert "train_adv_accuracy" in record["history"][-1]
    assert "train_adv_accuracy" not in json.loads((tmp_path / "std" / "last.json").read_text())["history"][-1]


def test_pick_worst_takes_per_image_the_family_of_highest_loss() -> None:
    losses = torch.tensor([[0.1, 2.0, 0.3, 5.0],
                           [0.5, 1.0, 0.2, 5.0],
                           [0.4, 3.0, 0.1, 1.0]])
    assert pick_worst(losses).tolist() == [1, 2, 0, 0]  # a tie goes to the first family


def _tiny_model() -> torch.nn.Module:
    from edgepure.models.registry import create_classifier

    torch.manual_seed(0)
    return create_classifier("signnet_xs", num_classes=4)


def test_max_strategy_keeps_per_image_the_highest_loss_family() -> None:
    model = _tiny_model()
    x, y = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3, 0, 1])
    families = ("conv", "patch", "additive")

    def craft(fams: tuple[str, ...], strategy: str = "max") -> tuple[torch.Tensor, torch.Tensor]:
        return Crafter(model, fams, "gtsrb", 32, steps=2, strategy=strategy)(x, y, torch.Generator().manual_seed(7))

    worst, family = craft(families)
    singles = torch.stack([craft((f,))[0] for f in families])  # each family's attack with the same seed
    model.eval()
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(model(s), y, reduction="none") for s in singles])
    assert family.tolist() == losses.argmax(0).tolist()
    assert len(set(family.tolist())) > 1  # the test means something only if the families differ between images
    assert torch.equal(worst, singles[family, torch.arange(6)])
    rand, rfamily = craft(families, "random")
    assert rfamily.tolist() == torch.randint(0, 3, (6,), generator=torch.Generator().manual_seed(7)).tolist()
    assert not torch.equal(rand, x)


def test_crafting_leaves_batchnorm_statistics_mode_and_gradients_alone() -> None:
    model = _tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for trades in (False, True):
        x_adv, _ = Crafter(model, ("flow", "all"), "gtsrb", 32, steps=2, trades=trades)(x, y, torch.Generator())
        assert x_adv.shape == x.shape and not torch.equal(x_adv, x)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_adversarial_loss_weights_clean_and_adversarial_or_adds_trades_kl() -> None:
    g = torch.Generator().manual_seed(0)
    logits, adv = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0])
    clean = F.cross_entropy(logits, y)
    ce_adv = F.cross_entropy(adv, y)
    assert torch.allclose(adversarial_loss(clean, logits, adv, y, 0.25, 0.0, 0.0), 0.75 * clean + 0.25 * ce_adv)
    assert torch.allclose(adversarial_loss(clean, logits, adv, y, None, 0.0, 0.0), 0.5 * clean + 0.5 * ce_adv)
    p = logits.softmax(1)
    kl = (p * (p.log() - adv.log_softmax(1))).sum(1).mean()
    assert torch.allclose(adversarial_loss(clean, logits, adv, y, None, 6.0, 0.0), clean + 6.0 * kl, atol=1e-6)


def test_both_strategies_and_trades_train_and_are_seeded(gtsrb_dir: Path, tmp_path: Path) -> None:
    kw = dict(adversarial="conv,patch", adv_steps=2, max_steps=2)
    for name, extra in (("random", {}), ("max", {"adv_strategy": "max"}), ("trades", {"trades": 6.0}),
                        ("apgd", {"adv_attack": "apgd"})):
        record = train_classifier(_cfg(gtsrb_dir, tmp_path / name, **kw, **extra), log=_quiet)
        assert 0.0 <= record["history"][-1]["train_adv_accuracy"] <= 1.0
    train_classifier(_cfg(gtsrb_dir, tmp_path / "max2", adv_strategy="max", **kw), log=_quiet)
    a, b, r = _weights(tmp_path / "max"), _weights(tmp_path / "max2"), _weights(tmp_path / "random")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], r[k]) for k in a if a[k].is_floating_point())


def test_parse_families_and_bad_settings_are_config_errors(gtsrb_dir: Path, tmp_path: Path) -> None:
    assert parse_families("") == () and parse_families("conv, flow") == ("conv", "flow")
    with pytest.raises(ConfigError, match=r"unknown perturbation family 'blur' \(expected a comma list of conv, "
                                          r"patch, flow, additive, all\)"):
        parse_families("conv,blur")
    with pytest.raises(ConfigError, match="each family once"):
        parse_families("conv,conv")
    for bad, match in (({"adv_steps": 0}, "adv-steps"), ({"adv_strategy": "avg"}, "random, max"),
                       ({"adv_attack": "fgsm"}, "pgd, apgd"), ({"adv_weight": 1.5}, r"\[0, 1\]"),
                       ({"trades": 6.0, "adv_weight": 0.5}, "give one of the two"),
                       ({"trades": 6.0, "cutmix": 0.5}, "use one of the two"), ({"trades": -1.0}, "≥ 0")):
        with pytest.raises(ConfigError, match=match):
            train_classifier(_cfg(gtsrb_dir, tmp_path / "bad", adversarial="conv", **bad), log=_quiet)
    assert not (tmp_path / "bad").exists()


def test_cli_takes_families_and_refuses_an_unknown_one(gtsrb_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "classifier", "--data", str(gtsrb_dir), "--model", "signnet_xs", "--epochs", "1",
            "--batch-size", "8", "--max-steps", "1", "--val-fraction", "0.25", "--adv-steps", "1"]
    r = runner.invoke(app, args + ["--out", str(run), "--adversarial", "conv,flow", "--adv-strategy", "max",
                                   "--adv-weight", "0.7", "--json"])
    assert r.exit_code == 0, r.output
    config = json.loads((run / "last.json").read_text())["config"]
    assert (config["adversarial"], config["adv_strategy"], config["adv_weight"], config["adv_steps"]) == \
        ("conv,flow", "max", 0.7, 1)
    r = runner.invoke(app, args + ["--out", str(tmp_path / "bad"), "--adversarial", "conv,shear"])
    assert r.exit_code == 1
    assert "unknown perturbation family 'shear' (expected a comma list of conv, patch, flow, additive, all)" in r.output
    assert "Traceback" not in r.output


def test_resume_continues_an_adversarial_run_exactly_and_refuses_other_settings(gtsrb_dir: Path,
                                                                               tmp_path: Path) -> None:
    kw = dict(epochs=2, adversarial="conv,additive", adv_strategy="max", adv_steps=2)
    train_classifier(_cfg(gtsrb_dir, tmp_path / "full", **kw), log=_quiet)

    def crash_after_first_epoch(msg: str) -> None:
        if msg.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(_cfg(gtsrb_dir, tmp_path / "cut", **kw), log=crash_after_first_epoch)
    with pytest.raises(ModelError, match="trained with adv_strategy='max', asked to resume with 'random'"):
        train_classifier(_cfg(gtsrb_dir, tmp_path / "cut", **{**kw, "adv_strategy": "random"}), resume=True,
                         log=_quiet)
    logs: list[str] = []
    record = train_classifier(_cfg(gtsrb_dir, tmp_path / "cut", **kw), resume=True, log=logs.append)
    assert logs[0].startswith("resuming from epoch 1") and record["epoch"] == 1
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_fine_tuning_from_the_shipped_cutmix_classifier(gtsrb_dir: Path, tmp_path: Path) -> None:
    # lr 0: the run holds the weights it started from (signnet_s_cutmix is signnet_s's architecture)
    train_classifier(_cfg(gtsrb_dir, tmp_path / "ft", model="signnet_s", init="signnet_s_cutmix", lr=0.0, max_steps=1,
                          adversarial="additive", adv_steps=1), log=_quiet)
    got = _weights(tmp_path / "ft")
    shipped = resolve_classifier("signnet_s_cutmix").state_dict()
    assert all(torch.equal(got[k], shipped[k]) for k in got if got[k].is_floating_point() and "running" not in k)
    with pytest.raises(ConfigError, match="it is a signnet_s_cutmix, the run trains a signnet_xs"):
        train_classifier(_cfg(gtsrb_dir, tmp_path / "x", init="signnet_s_cutmix", max_steps=1), log=_quiet)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_adversarial_training_on_cuda_matches_the_cpu_draws(gtsrb_dir: Path, tmp_path: Path) -> None:
    kw = dict(adversarial="patch,flow", adv_strategy="max", adv_steps=2, max_steps=2)
    record = train_classifier(_cfg(gtsrb_dir, tmp_path / "gpu", **kw), log=_quiet, device="cuda")
    assert 0.0 <= record["history"][-1]["train_adv_accuracy"] <= 1.0
    assert all(v.device.type == "cpu" for v in _weights(tmp_path / "gpu").values())
