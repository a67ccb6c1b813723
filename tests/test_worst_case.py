"""The honest blind threat (which iterate an attack transfers), resubmission over noise draws and the worst-case figure."""

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from edgepure.attacks import APGD, PGD
from edgepure.evaluate.robust import benchmark
from edgepure.perturb import create_perturbation
from edgepure.purifiers import Purifier
from edgepure.runtime.errors import ConfigError
from test_attacks import Templates, _batch, _imageset


class FlipOnNoise(Purifier):
    """A stochastic purifier whose noise flips the reading: where an image's noise draw exceeds ``threshold`` it is
    replaced by the template of the next class, else passed through."""

    stochastic = True

    def __init__(self, templates: torch.Tensor, threshold: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("t", templates.clone())
        self.threshold = threshold

    def noise_shape(self, x: torch.Tensor) -> Optional[tuple[int, ...]]:
        return (x.shape[0],)

    def flips(self, noise: torch.Tensor) -> torch.Tensor:
        return noise > self.threshold

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        if noise is None:
            noise = torch.randn(x.shape[0])
        nearest = ((x[:, None] - self.t[None]) ** 2).flatten(2).sum(2).argmin(1)
        other = self.t[(nearest + 1) % len(self.t)]
        return torch.where(self.flips(noise).view(-1, 1, 1, 1).to(x.device), other, x)

    def config(self) -> dict[str, object]:
        return {"threshold": self.threshold}


def _ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


# -- item 4: which iterate the attack transfers ------------------------------------------------------------------
@pytest.mark.parametrize("method", [APGD, PGD])
@pytest.mark.parametrize("restarts", [1, 2])
def test_the_loss_transfer_returns_the_highest_loss_iterate(method: type, restarts: int) -> None:
    x, y, m = _batch(12)
    family = create_perturbation("additive", eps=0.3)
    first = method(m, family, steps=20, seed=3, restarts=restarts, transfer="first")(x, y)
    loss = method(m, family, steps=20, seed=3, restarts=restarts, transfer="loss")(x, y)
    default = method(m, family, steps=20, seed=3, restarts=restarts)(x, y)
    assert torch.equal(default, loss)  # the highest-loss iterate is the default
    l_first, l_loss = _ce(m, first, y), _ce(m, loss, y)
    assert bool((l_loss >= l_first - 1e-5).all())
    with torch.no_grad():
        fooled_first = m(first).argmax(1) != y
    assert bool(fooled_first.any())
    if method is APGD:  # (PGD's "first" already takes the highest-loss point among those that fool the model)
        # images fooled early in the run return a point of higher loss than the one that first fooled the model
        assert bool((l_loss[fooled_first] > l_first[fooled_first] + 1e-3).any())


def test_an_unknown_transfer_is_a_user_error() -> None:
    _, _, m = _batch(3)
    with pytest.raises(ConfigError, match="transfer must be one of loss, first, got 'best'"):
        APGD(m, "additive", transfer="best")


def test_the_blind_transfer_keys_the_cache_and_is_recorded(tmp_path: Path) -> None:
    from edgepure.evaluate.robust import adversarial_key, blind_spec

    x, y, m = _batch(12)
    data = _imageset(x, y)
    kw = dict(attacks=["additive"], threats=["blind"], steps=6, batch_size=5, budgets={"additive": {"eps": 0.3}},
              cache_dir=tmp_path)
    strong = benchmark(m, data, "median", **kw)  # type: ignore[arg-type]
    assert strong["attack"]["blind_transfer"] == "loss"
    assert len(list(tmp_path.glob("blind-*.npy"))) == 1
    old = benchmark(m, data, "median", blind_transfer="first", **kw)  # type: ignore[arg-type]
    assert old["attack"]["blind_transfer"] == "first"
    assert len(list(tmp_path.glob("blind-*.npy"))) == 2  # not the "loss" entry read back
    xs, ys = torch.from_numpy(data.as_float_nchw()), torch.from_numpy(data.labels)
    keys = {t: adversarial_key(m, xs, ys, blind_spec("additive", 6, 0, transfer=t)) for t in ("loss", "first")}
    assert keys["loss"] != keys["first"]
    # an entry written before the setting existed (its spec had no transfer) was made with "first": it is the "first"
    # entry, never the "loss" one
    before = blind_spec("additive", 6, 0, transfer="first")
    before.pop("transfer", None)
    assert adversarial_key(m, xs, ys, before) == keys["first"] != keys["loss"]
    with pytest.raises(ConfigError, match="transfer"):
        benchmark(m, data, "median", blind_transfer="best", **kw)  # type: ignore[arg-type]


def test_the_priors_pool_is_crafted_with_the_loss_transfer(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgepure.evaluate import robust
    from edgepure.training.prior import adversarial_pool

    seen: list[str] = []
    real = robust.blind_examples

    def spy(*a, **kw):  # type: ignore[no-untyped-def]
        seen.append(kw["transfer"])
        return real(*a, **kw)

    monkeypatch.setattr(robust, "blind_examples", spy)
    x, y, m = _batch(4)
    images = (x * 255).round().to(torch.uint8)
    adversarial_pool(images, y, m, 2, 0.5, None)  # type: ignore[arg-type]
    assert seen == ["loss", "loss"]
    seen.clear()
    adversarial_pool(images, y, m, 2, 0.5, None, transfer="first")  # type: ignore[arg-type]
    assert seen == ["first", "first"]
    from edgepure.training.prior import PriorConfig

    assert PriorConfig(data="d", out="o").adv_pool_transfer == "loss"  # train_prior passes it to adversarial_pool
    with pytest.raises(ConfigError, match="adv_pool_transfer must be one of loss, first, got 'last'"):
        PriorConfig(data="d", out="o", adv_pool_transfer="last")


def test_train_prior_crafts_its_pool_with_the_transfer_it_is_given(gtsrb_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from edgepure.evaluate import robust
    from edgepure.training.prior import PriorConfig, train_prior

    seen: list[str] = []
    real = robust.blind_examples
    monkeypatch.setattr(robust, "blind_examples", lambda *a, **kw: seen.append(kw["transfer"]) or real(*a, **kw))
    base = dict(data=str(gtsrb_dir), model="edm_unet_xs", epochs=1, batch_size=8, val_fraction=0.25, val_n=8,
                warmup_steps=2, max_steps=1, adversarial=1.0, adv_pool=4, adv_pool_steps=1, shift=0)
    train_prior(PriorConfig(out=str(tmp_path / "a"), **base), log=lambda s: None)  # type: ignore[arg-type]
    assert seen == ["loss"] * 4  # pool and validation set, a patch and an additive run each
    seen.clear()
    train_prior(PriorConfig(out=str(tmp_path / "b"), adv_pool_transfer="first", **base), log=lambda s: None)  # type: ignore[arg-type]
    assert seen == ["first"] * 4
    seen.clear()
    from edgepure.cli.main import app

    args = ["train", "prior", "--data", str(gtsrb_dir), "--out", str(tmp_path / "c"), "--model", "edm_unet_xs",
            "--epochs", "1", "--batch-size", "8", "--max-steps", "1", "--adversarial", "1", "--adv-pool", "4",
            "--adv-pool-steps", "1", "--adv-pool-transfer", "first"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen and set(seen) == {"first"}
    result = CliRunner().invoke(app, [*args[:-1], "last", "--out", str(tmp_path / "d")])
    assert result.exit_code == 1 and "adv_pool_transfer must be one of loss, first" in result.output


# -- item 5: resubmission over noise draws ---------------------------------------------------------------------------
def _expected_draws(purifier: FlipOnNoise, x: torch.Tensor, batch_size: int, draws: int, seed: int = 0) -> np.ndarray:
    """Which images a draw flips, per draw (draws × N): the noise each batch is scored with, drawn again."""
    from edgepure.evaluate.draws import draw_seed

    out = []
    for r in range(draws):
        flips = [purifier.flips(purifier.sample_noise(x[s : s + batch_size],
                                                      torch.Generator().manual_seed(draw_seed(seed + s, r))))
                 for s in range(0, len(x), batch_size)]
        out.append(torch.cat(flips).numpy())
    return np.stack(out)


def test_resubmission_counts_an_image_only_when_every_draw_reads_it_right() -> None:
    x, y, m = _batch(30)
    data = _imageset(x, y)
    x8 = torch.from_numpy(data.as_float_nchw())
    flip = FlipOnNoise(m.t)
    kw = dict(attacks=["additive"], threats=["blind"], steps=1, batch_size=8, budgets={"additive": {"eps": 1e-3}})
    flips = _expected_draws(flip, x8, 8, 5)
    every = float((~flips.any(0)).mean())
    single = float((~flips[0]).mean())
    majority = float((flips.sum(0) <= 2).mean())  # 5 draws, one wrong class: right on 3 or more
    assert every < single < majority  # the three rules differ on these draws
    r5 = benchmark(m, data, flip, **kw)  # type: ignore[arg-type]
    assert r5["resubmit"] == 5  # the default for a stochastic pipeline
    assert r5["clean_accuracy"] == pytest.approx(every)
    assert r5["clean_accuracy_majority"] == pytest.approx(majority)
    # the attack cannot move these images across a margin: the attacked reading is the clean one, draw for draw
    assert r5["robust_accuracy"]["additive"]["blind"] == pytest.approx(every)
    assert r5["robust_accuracy_majority"]["additive"]["blind"] == pytest.approx(majority)
    r1 = benchmark(m, data, flip, resubmit=1, **kw)  # type: ignore[arg-type]
    assert r1["resubmit"] == 1 and r1["clean_accuracy"] == pytest.approx(single)
    assert r1["robust_accuracy"]["additive"]["blind"] == pytest.approx(single)
    assert r1["clean_accuracy_majority"] == r1["clean_accuracy"]  # one draw: the majority is that draw
    det = benchmark(m, data, "median", **kw)  # type: ignore[arg-type]
    assert det["resubmit"] == 1  # a deterministic pipeline reads the same on every draw
    with pytest.raises(ConfigError, match="resubmit must be ≥ 1"):
        benchmark(m, data, flip, resubmit=0, **kw)  # type: ignore[arg-type]


def test_a_majority_is_a_plurality_of_the_draws_and_ties_are_misreads() -> None:
    from edgepure.evaluate.draws import right_by_majority, right_on_every_draw

    labels = np.array([0, 0, 0, 0, 1])
    preds = np.array([[0, 1, 0, 2, 1],
                      [0, 2, 1, 2, 1],
                      [0, 0, 2, 0, 1],
                      [0, 1, 1, 0, 0]])
    # image 0: every draw; 1: 1 of 4 (class 1 has 2); 2: 1 vs 2 vs 1; 3: 2 vs 2 (a tie); 4: 3 of 4
    assert right_on_every_draw(preds, labels).tolist() == [True, False, False, False, False]
    assert right_by_majority(preds, labels).tolist() == [True, False, False, False, True]
    assert right_by_majority(np.array([[0, 2, 1]]), np.array([0, 1, 1])).tolist() == [True, False, True]


def test_a_stochastic_defense_is_attacked_with_eot_4_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgepure.evaluate import robust

    eots: list[tuple[object, int]] = []

    class Recording(robust.ATTACK_METHODS["pgd"]):  # type: ignore[misc, valid-type]
        def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            eots.append((type(self.model).__name__, self.eot))
            return super().__call__(xb, yb)

    monkeypatch.setitem(robust.ATTACK_METHODS, "pgd", Recording)
    x, y, m = _batch(6)
    data = _imageset(x, y)
    kw = dict(attacks=["additive"], threats=["blind", "adaptive"], method="pgd", steps=1, batch_size=6,
              budgets={"additive": {"eps": 0.1}}, resubmit=1)
    r = benchmark(m, data, FlipOnNoise(m.t), **kw)  # type: ignore[arg-type]
    # the blind attack differentiates the deterministic classifier: one draw is its gradient
    assert eots == [("Templates", 1), ("DefendedModel", 4)]
    assert r["attack"]["eot"] == 4 and r["attack"]["eot_default"] is True
    from edgepure.evaluate.report import format_table

    assert "over 4 noise draws (EOT" in format_table(r)
    eots.clear()
    told = benchmark(m, data, FlipOnNoise(m.t), eot=2, **kw)  # type: ignore[arg-type]
    assert eots == [("Templates", 2), ("DefendedModel", 2)] and told["attack"]["eot_default"] is False
    eots.clear()
    benchmark(m, data, "median", **kw)  # type: ignore[arg-type]
    assert eots == [("Templates", 1), ("DefendedModel", 1)]


# -- item 5: the worst case -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("defense", ["bitdepth", "flip"])
def test_the_worst_threat_is_never_above_its_parts(defense: str) -> None:
    from edgepure.evaluate.report import format_table
    from edgepure.evaluate.worst import unpack_mask
    from edgepure.purifiers import create_purifier

    x, y, m = _batch(12)
    data = _imageset(x, y)
    pur = (lambda: create_purifier("bitdepth", bits=3)) if defense == "bitdepth" else (lambda: FlipOnNoise(m.t, 1.2))
    kw = dict(attacks=["additive", "conv"], method="pgd", steps=3, batch_size=5, budgets={"additive": {"eps": 0.2}})
    r = benchmark(m, data, pur(), threats=["worst"], **kw)  # type: ignore[arg-type]
    # a purifier whose gradient is zero is attacked through BPDA too
    parts = ["blind", "adaptive", "bpda"] if defense == "bitdepth" else ["blind", "adaptive"]
    assert r["threats"] == parts and r["columns"] == ["worst"] and r["attack"]["cascade"] is True
    # the parts run separately, each on every image
    apart = benchmark(m, data, pur(), threats=parts, **kw)  # type: ignore[arg-type]
    for per_image, rate, clean in (("attacks", "robust_accuracy", "clean"),
                                   ("attacks_majority", "robust_accuracy_majority", "clean_majority")):
        for attack in ("additive", "conv"):
            masks = {t: unpack_mask(v, 12) for t, v in r["per_image"][per_image][attack].items()}
            worst = unpack_mask(r["per_image"][clean], 12)
            for t in parts:
                worst &= masks[t]
            row, alone = r[rate][attack], apart[rate][attack]
            assert row["worst"] == pytest.approx(worst.mean())
            assert all(row["worst"] <= row[t] for t in parts) and all(row["worst"] <= alone[t] for t in parts)
            # the blind part is the blind threat's own examples, image for image
            assert not (worst & ~unpack_mask(apart["per_image"][per_image][attack]["blind"], 12)).any()
    if defense == "bitdepth":  # the adaptive attack alone cannot move through the quantiser: the worst is below it
        assert r["robust_accuracy"]["additive"]["worst"] < apart["robust_accuracy"]["additive"]["adaptive"]
    table = format_table(r)
    assert table.splitlines()[1].split() == ["attack", "worst"]
    if defense == "flip":
        assert r["resubmit"] == 5 and "majority" in table
        assert r["clean_accuracy"] < r["clean_accuracy_majority"]  # the draws disagree on some images
    with pytest.raises(ConfigError, match="worst"):
        benchmark(m, data, pur(), threats=["worst", "blind"], **kw)  # type: ignore[arg-type]
    if defense == "flip":  # `eval worst` combines runs scored by the same rule only
        from edgepure.evaluate.worst import worst_of

        once = benchmark(m, data, pur(), threats=["blind"], resubmit=1, **kw)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=r"differ in the noise draws per image \(--resubmit\): 5 vs 1"):
            worst_of([r, once], ["five", "one"])


def test_eval_robust_takes_the_worst_threat_and_the_new_settings(tiny_run: Path, tmp_path: Path) -> None:
    from edgepure.cli.main import app

    runner = CliRunner()
    base = ["eval", "robust", "--data", "synth", "--n", "4", "--model", str(tiny_run), "--attack", "additive",
            "--steps", "1", "--defense", "median"]
    r = runner.invoke(app, base + ["--threat", "worst", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["columns"] == ["worst"] and res["attack"]["blind_transfer"] == "loss" and res["resubmit"] == 1
    r = runner.invoke(app, base + ["--threat", "blind", "--blind-transfer", "first", "--resubmit", "3", "--json",
                                   "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["attack"]["blind_transfer"] == "first" and res["resubmit"] == 3
    csv_head = (tmp_path / "out" / "results.csv").read_text().splitlines()[0].split(",")
    assert {"robust_accuracy_majority", "clean_accuracy_majority", "resubmit"} <= set(csv_head)
    r = runner.invoke(app, base + ["--threat", "worst"])
    assert r.exit_code == 0 and r.stdout.splitlines()[1].split() == ["attack", "worst"]
    r = runner.invoke(app, base + ["--blind-transfer", "best"])
    assert r.exit_code == 2
