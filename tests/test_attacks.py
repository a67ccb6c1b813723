import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from edgepure.attacks import APGD, PGD, DefendedModel, Threat, attack_target
from edgepure.data.base import ImageSet
from edgepure.evaluate.robust import benchmark
from edgepure.perturb import create_perturbation
from edgepure.purifiers import create_purifier
from edgepure.runtime.errors import ConfigError, DataError


class Templates(nn.Module):
    """A classifier with known margins: logits = −‖x − template_c‖² / 50 for 3 smooth colour templates."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        base = torch.rand(3, 3, 4, 4, generator=g)
        self.register_buffer("t", nn.functional.interpolate(base, size=32, mode="bilinear", align_corners=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -((x[:, None] - self.t[None]) ** 2).flatten(2).sum(2) / 50.0


def _batch(n: int = 12) -> tuple[torch.Tensor, torch.Tensor, Templates]:
    m = Templates()
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n) % 3
    x = (m.t[y] + 0.05 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)
    return x, y, m


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("family", ["conv", "patch", "flow", "additive", "all"])
def test_attack_output_respects_budget_and_gradients_are_finite(family: str) -> None:
    x, y, m = _batch()
    atk = APGD(m, family, steps=6)
    x_adv = atk(x, y)
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    p = atk.perturbation
    projected = p.project({k: v.clone() for k, v in atk.params.items()}, x)
    for k, v in atk.params.items():
        torch.testing.assert_close(v, projected[k])  # already inside the budget
    _, grads, _ = atk.loss_and_grad(x, y, atk.params)
    assert all(torch.isfinite(gk).all() for gk in grads.values())



def _imageset(x: torch.Tensor, y: torch.Tensor) -> ImageSet:
    """``x`` (N×3×H×W in [0, 1]) and ``y`` as an 8-bit image set of the templates' three classes."""
    return ImageSet((x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8), y.numpy(),
                    [str(i) for i in range(len(y))], ("a", "b", "c"))

def test_additive_attack_breaks_the_template_model() -> None:
    x, y, m = _batch()
    assert _acc(m, x, y) == 1.0
    x_adv = APGD(m, create_perturbation("additive", eps=0.3), steps=20)(x, y)
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6
    assert _acc(m, x_adv, y) < 0.5


def test_same_seed_same_result() -> None:
    x, y, m = _batch()
    a = APGD(m, "flow", steps=5, seed=3)(x, y)
    b = APGD(m, "flow", steps=5, seed=3)(x, y)
    c = APGD(m, "flow", steps=5, seed=4)(x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("method", [APGD, PGD])
def test_larger_budget_never_helps_the_defender(method: type) -> None:
    x, y, m = _batch(24)
    accs = []
    for eps in (0.02, 0.08, 0.16, 0.3):
        x_adv = method(m, create_perturbation("additive", eps=eps), steps=20)(x, y)
        accs.append(_acc(m, x_adv, y))
    assert accs == sorted(accs, reverse=True), accs
    assert accs[0] > accs[-1]


def test_eot_calls_the_model_k_times_per_step() -> None:
    x, y, m = _batch(3)
    calls = []

    def counting(z: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return m(z)

    APGD(counting, "additive", steps=4, eot=3)(x, y)
    assert len(calls) == 3 * (4 + 1)


def test_bpda_gets_through_a_gradient_masking_purifier() -> None:
    x, y, m = _batch()
    squeeze = create_purifier("bitdepth", bits=3)
    perturbation = create_perturbation("additive", eps=0.3)
    full = APGD(attack_target(Threat.adaptive, squeeze, m), perturbation, steps=15, random_init=False)
    bpda = APGD(attack_target(Threat.bpda, squeeze, m), perturbation, steps=15, random_init=False)
    defended = DefendedModel(squeeze, m)
    # the quantiser's gradient is zero: the full-gradient attack cannot move, BPDA can
    assert torch.equal(full(x, y), x)
    assert _acc(defended, bpda(x, y), y) < _acc(defended, x, y)


def test_eot_over_a_stochastic_purifier_is_reproducible() -> None:
    x, y, m = _batch(6)
    noisy = create_purifier("gaussian", sigma=0.8, noise_std=0.1)
    assert noisy.stochastic
    runs = [APGD(attack_target(Threat.adaptive, noisy, m, seed=5), "additive", steps=4, eot=2)(x, y) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_benchmark_numbers_are_consistent() -> None:
    x, y, m = _batch(12)
    data = _imageset(x, y)
    r = benchmark(m, data, "gaussian", ["additive", "flow"], ["blind", "adaptive"], steps=5, batch_size=5,
                  budgets={"additive": {"eps": 0.3}})
    assert r["n"] == 12 and r["threats"] == ["blind", "adaptive"]
    for row in r["robust_accuracy"].values():
        assert row["worst"] <= min(row["blind"], row["adaptive"]) <= r["clean_accuracy"]
    assert r["average"]["worst"] == pytest.approx(np.mean([row["worst"] for row in r["robust_accuracy"].values()]))
    none = benchmark(m, data, None, ["additive"], ["blind", "adaptive"], steps=5, budgets={"additive": {"eps": 0.3}})
    assert none["threats"] == ["blind"]  # without a defense the threats coincide
    with pytest.raises(ConfigError, match="unknown attack"):
        benchmark(m, data, None, ["rain"])


def test_the_worst_case_across_separate_runs_is_the_worst_of_one_run() -> None:
    from edgepure.evaluate.worst import pack_mask, unpack_mask, worst_of

    x, y, m = _batch(12)
    data = _imageset(x, y)
    kw = dict(attacks=["additive", "flow"], steps=5, batch_size=5, budgets={"additive": {"eps": 0.3}})
    both = benchmark(m, data, "gaussian", threats=["blind", "adaptive"], **kw)  # type: ignore[arg-type]
    clean = unpack_mask(both["per_image"]["clean"], 12)
    assert clean.mean() == pytest.approx(both["clean_accuracy"])
    for attack, threats in both["per_image"]["attacks"].items():
        for threat, text in threats.items():
            ok = unpack_mask(text, 12) & clean
            assert ok.mean() == pytest.approx(both["robust_accuracy"][attack][threat])
    blind = benchmark(m, data, "gaussian", threats=["blind"], **kw)  # type: ignore[arg-type]
    adaptive = benchmark(m, data, "gaussian", threats=["adaptive"], **kw)  # type: ignore[arg-type]
    combined = worst_of([blind, adaptive], ["b", "a"])
    assert combined["clean_accuracy"] == pytest.approx(both["clean_accuracy"])
    for attack in ("additive", "flow"):
        row = combined["robust_accuracy"][attack]
        assert row["worst"] == pytest.approx(both["robust_accuracy"][attack]["worst"])
        assert row["b:blind"] == pytest.approx(both["robust_accuracy"][attack]["blind"])
        assert row["a:adaptive"] == pytest.approx(both["robust_accuracy"][attack]["adaptive"])
    assert combined["average"]["worst"] == pytest.approx(both["average"]["worst"])
    # runs that take different images: the worst is below each; an attack in one run only is that run's
    first = np.arange(12) < 8
    flow = unpack_mask(blind["per_image"]["attacks"]["flow"]["blind"], 12)
    r1 = {**blind, "per_image": {**blind["per_image"], "attacks": {"additive": {"blind": pack_mask(first)},
                                                                    "flow": {"blind": pack_mask(flow)}}}}
    r2 = {**blind, "per_image": {**blind["per_image"], "attacks": {"additive": {"adaptive": pack_mask(~first)}}}}
    mixed = worst_of([r1, r2], ["one", "two"])
    assert blind["clean_accuracy"] == 1.0 and mixed["robust_accuracy"]["additive"] == pytest.approx(
        {"one:blind": 8 / 12, "two:adaptive": 4 / 12, "worst": 0.0})
    assert mixed["robust_accuracy"]["flow"]["worst"] == pytest.approx(flow.mean())
    assert mixed["attacks_in"] == {"additive": ["one", "two"], "flow": ["one"]}
    other = benchmark(m, data.take(list(range(1, 12)) + [0]), "gaussian", threats=["blind"], **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="b and o differ in the images scored"):
        worst_of([blind, other], ["b", "o"])
    with pytest.raises(ConfigError, match="differ in the defense"):
        worst_of([blind, benchmark(m, data, "median", threats=["blind"], **kw)], ["b", "m"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least two"):
        worst_of([blind], ["b"])
    retrained = Templates()
    retrained.t.mul_(0.9)  # the same classifier by name (a Python run has none), other weights
    with pytest.raises(ConfigError, match="differ in the networks' weights"):
        worst_of([blind, benchmark(retrained, data, "gaussian", threats=["blind"], **kw)], ["b", "r"])  # type: ignore[arg-type]
    mask = np.arange(13) % 3 == 0
    assert np.array_equal(unpack_mask(pack_mask(mask), 13), mask) and len(pack_mask(mask)) == 4
    with pytest.raises(DataError, match="expected 2 bytes for 13 images, found 3"):
        unpack_mask("00ff00", 13)
    with pytest.raises(DataError, match="expected hex digits"):
        unpack_mask("zz", 8)


def test_blind_adversarials_are_cached_per_classifier_images_and_attack(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y, m = _batch(12)
    data = _imageset(x, y)
    kw = dict(attacks=["additive"], threats=["blind"], steps=5, batch_size=5, budgets={"additive": {"eps": 0.3}},
              cache_dir=tmp_path)
    first = benchmark(m, data, "median", **kw)  # type: ignore[arg-type]
    files = list(tmp_path.glob("blind-*.npy"))
    assert len(files) == 1 and np.load(files[0]).shape == (12, 3, 32, 32)
    # another defense reuses the same adversarial examples: same robust numbers as recomputing them
    cached = benchmark(m, data, "gaussian", **kw)  # type: ignore[arg-type]
    fresh = benchmark(m, data, "gaussian", **{**kw, "cache_dir": None})  # type: ignore[arg-type]
    assert cached["robust_accuracy"] == fresh["robust_accuracy"] and len(list(tmp_path.glob("blind-*.npy"))) == 1
    assert first["robust_accuracy"]["additive"]["blind"] <= first["clean_accuracy"]
    benchmark(m, data, "gaussian", **{**kw, "steps": 6})  # type: ignore[arg-type]
    assert len(list(tmp_path.glob("blind-*.npy"))) == 2  # a different attack is a different entry
    np.save(files[0], np.zeros((3, 3), np.float32))
    with pytest.raises(ConfigError, match="delete the file"):
        benchmark(m, data, "gaussian", **kw)  # type: ignore[arg-type]


def test_blind_examples_are_benchmarks_examples_for_every_method(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgepure.evaluate.robust import blind_examples

    x, y, m = _batch(12)
    data = _imageset(x, y)
    benchmark(m, data, None, ["additive"], ["blind"], method="pgd", steps=2, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("blind-*.npy")
    xs, ys = torch.from_numpy(data.as_float_nchw()), torch.from_numpy(data.labels)
    logs: list[str] = []
    got = blind_examples(m, xs, ys, "additive", 2, 0, tmp_path, log=logs.append, method="pgd")
    assert not logs and torch.equal(got, torch.from_numpy(np.load(cached)))  # the same entry, not recomputed
    fresh = blind_examples(m, xs, ys, "additive", 2, 0, None, method="pgd")
    assert torch.equal(fresh, got)  # and what benchmark computed is what this computes
    apgd = blind_examples(m, xs, ys, "additive", 2, 0, tmp_path, log=logs.append)
    assert len(logs) == 1 and logs[0].startswith("blind additive (apgd 2)") and len(list(tmp_path.glob("blind-*.npy"))) == 2
    assert 0 < float((apgd - xs).abs().max()) <= 24 / 255 + 1e-6  # the protocol's GTSRB budget
    with pytest.raises(ConfigError, match="unknown attack method 'fgsm'"):
        blind_examples(m, xs, ys, "additive", 2, method="fgsm")


def test_adaptive_adversarials_are_cached_per_purifier(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgepure.purifiers import create_purifier

    x, y, m = _batch(10)
    data = _imageset(x, y)
    kw = dict(attacks=["additive"], threats=["adaptive"], steps=5, batch_size=5, budgets={"additive": {"eps": 0.3}},
              cache_dir=tmp_path)
    first = benchmark(m, data, create_purifier("gaussian", sigma=1.0), **kw)  # type: ignore[arg-type]
    assert [f.name.split("-")[0] for f in tmp_path.glob("*.npy")] == ["adaptive"]
    # the same purifier scored again (another backend would be a scorer) reads them back: same numbers
    calls = []

    def scorer(xb: torch.Tensor, seed: int) -> np.ndarray:
        calls.append(xb.shape[0])
        return m(create_purifier("gaussian", sigma=1.0)(xb)).argmax(1).numpy()

    again = benchmark(m, data, create_purifier("gaussian", sigma=1.0), scorer=scorer, **kw)  # type: ignore[arg-type]
    assert again["robust_accuracy"] == first["robust_accuracy"] and len(list(tmp_path.glob("*.npy"))) == 1
    assert sum(calls) == 20  # clean and attacked images, scored by the scorer
    (entry,) = tmp_path.glob("adaptive-*.npy")
    np.save(entry, x.numpy())  # what is on disk is what gets scored: clean images score as clean
    read = benchmark(m, data, create_purifier("gaussian", sigma=1.0), **kw)  # type: ignore[arg-type]
    assert read["robust_accuracy"]["additive"]["adaptive"] == read["clean_accuracy"]
    # other settings of the purifier are another attack: a new entry
    benchmark(m, data, create_purifier("gaussian", sigma=2.0), **kw)  # type: ignore[arg-type]
    assert len(list(tmp_path.glob("adaptive-*.npy"))) == 2


def test_a_surrogate_crafts_the_adaptive_examples_and_the_defense_scores_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y, m = _batch(10)
    data = _imageset(x, y)
    kw = dict(attacks=["additive"], threats=["adaptive"], steps=5, batch_size=5, budgets={"additive": {"eps": 0.3}},
              cache_dir=tmp_path)
    # the surrogate defended on its own: its adaptive examples are cached
    own = benchmark(m, data, create_purifier("median", kernel_size=3), **kw)  # type: ignore[arg-type]
    (entry,) = tmp_path.glob("adaptive-*.npy")
    adv = torch.from_numpy(np.load(entry))
    defense = create_purifier("median", kernel_size=5)
    via = benchmark(m, data, defense, surrogate=create_purifier("median", kernel_size=3), **kw)  # type: ignore[arg-type]
    assert len(list(tmp_path.glob("adaptive-*.npy"))) == 1  # the surrogate's examples, read back, not crafted again
    assert via["surrogate"] == {"defense": "median", "defense_config": {"kernel_size": 3}}
    assert via["defense_config"] == {"kernel_size": 5}
    with torch.no_grad():  # scored on the defense, not on the surrogate
        clean_ok = m(defense(x)).argmax(1) == y
        expect = float(((m(defense(adv)).argmax(1) == y) & clean_ok).float().mean())
    assert via["robust_accuracy"]["additive"]["adaptive"] == pytest.approx(expect)
    assert via["clean_accuracy"] == pytest.approx(float(clean_ok.float().mean()))
    assert own["defense_config"] == {"kernel_size": 3}
    # without a cache the surrogate's examples are crafted afresh: the same ones
    fresh = benchmark(m, data, defense, surrogate="median", **{**kw, "cache_dir": None})  # type: ignore[arg-type]
    assert fresh["robust_accuracy"] == via["robust_accuracy"]
    with pytest.raises(ConfigError, match="without a defense"):
        benchmark(m, data, None, surrogate="median", **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="used only by the adaptive threats"):
        benchmark(m, data, defense, surrogate="median", **{**kw, "threats": ["blind"]})  # type: ignore[arg-type]


@pytest.fixture
def pgd_batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of images of each batch the ``pgd`` attack method is given, in order (it attacks as it would)."""
    from edgepure.evaluate import robust

    sizes: list[int] = []

    class Recording(robust.ATTACK_METHODS["pgd"]):  # type: ignore[misc, valid-type]
        def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            sizes.append(len(xb))
            return super().__call__(xb, yb)

    monkeypatch.setitem(robust.ATTACK_METHODS, "pgd", Recording)
    return sizes


def test_skipping_misread_images_attacks_only_the_images_that_can_count(tmp_path, pgd_batch_sizes) -> None:  # type: ignore[no-untyped-def]
    from edgepure.evaluate.report import _example_figure
    from edgepure.evaluate.robust import _defended_predict
    from edgepure.evaluate.worst import unpack_mask

    x, y, m = _batch(12)
    wrong = torch.tensor([1, 4, 7, 8])
    labels = y.clone()
    labels[wrong] = (y[wrong] + 1) % 3  # these four are misread clean, whatever the defense
    data = _imageset(x, labels)
    sizes = pgd_batch_sizes
    kw = dict(attacks=["additive"], threats=["blind", "adaptive"], method="pgd", steps=3, batch_size=5,
              budgets={"additive": {"eps": 0.3}}, cache_dir=tmp_path)
    defense = create_purifier("gaussian", sigma=1.0)
    r = benchmark(m, data, defense, skip_misread=True, **kw)  # type: ignore[arg-type]
    clean_ok = unpack_mask(r["per_image"]["clean"], 12)
    assert not clean_ok[wrong.numpy()].any() and clean_ok.sum() == 8
    # the blind threat attacks every image; the adaptive one only those read right clean
    assert sizes == [5, 5, 2] + [int(clean_ok[s : s + 5].sum()) for s in (0, 5, 10)]
    assert r["attack"]["skip_misread"] is True
    (entry,) = tmp_path.glob("adaptive-*.npy")
    adv, xs = np.load(entry), data.as_float_nchw()
    np.testing.assert_array_equal(adv[~clean_ok], xs[~clean_ok])  # left as they are
    assert (np.abs(adv[clean_ok] - xs[clean_ok]).reshape(8, -1).max(1) > 0).all()  # every other image attacked
    with torch.no_grad():  # the figure is what the defense reads of the examples, counted where read right clean
        read = (m(defense(torch.from_numpy(adv))).argmax(1) == labels).numpy()
    assert r["robust_accuracy"]["additive"]["adaptive"] == pytest.approx(float((read & clean_ok).mean()))
    survived = unpack_mask(r["per_image"]["attacks"]["additive"]["adaptive"], 12)
    assert not survived[~clean_ok].any()
    # a run that attacks every image does not take these examples (another batch, other noise): its own entry
    sizes.clear()
    full = benchmark(m, data, defense, **kw)  # type: ignore[arg-type]
    assert sizes == [5, 5, 2] and full["attack"]["skip_misread"] is False  # the blind examples were read back
    assert len(list(tmp_path.glob("adaptive-*.npy"))) == 2 and len(list(tmp_path.glob("blind-*.npy"))) == 1
    assert full["clean_accuracy"] == r["clean_accuracy"]
    # the examples figure shows the images the adaptive threat attacked first (the left-out ones only to fill it), each
    # purified panel the reading its batch was scored with; the blind threat's are the first images
    shown = benchmark(m, data, defense, skip_misread=True, keep_examples=10, **kw)["examples"]["additive"]  # type: ignore[arg-type]
    order = np.concatenate([np.flatnonzero(clean_ok), np.flatnonzero(~clean_ok)])[:10]  # 0 2 3 5 6 9 10 11, 1 4
    np.testing.assert_array_equal(shown["adaptive"][0], xs[order])
    np.testing.assert_array_equal(shown["adaptive"][1], adv[order])
    assert (shown["adaptive"][1][:8] != shown["adaptive"][0][:8]).reshape(8, -1).any(1).all()
    np.testing.assert_array_equal(shown["adaptive"][1][8:], shown["adaptive"][0][8:])  # "not attacked" in the figure
    with torch.no_grad():
        read = {s: _defended_predict(m, defense, torch.from_numpy(adv[s : s + 5]), s)[1].numpy() for s in (0, 5, 10)}
    np.testing.assert_allclose(shown["adaptive"][2], np.stack([read[i // 5 * 5][i % 5] for i in order]), atol=1e-6)
    np.testing.assert_array_equal(shown["blind"][0], xs[:10])
    _example_figure({"examples": {"additive": shown}}, tmp_path / "examples.png")  # labels the two left out
    assert (tmp_path / "examples.png").stat().st_size > 0


def test_a_cascade_attacks_only_the_survivors_of_the_threats_before(tmp_path, pgd_batch_sizes) -> None:  # type: ignore[no-untyped-def]
    from edgepure.evaluate.report import format_table
    from edgepure.evaluate.worst import unpack_mask

    x, y, m = _batch(12)
    data = _imageset(x, y)
    sizes = pgd_batch_sizes
    kw = dict(attacks=["additive"], threats=["blind", "adaptive"], method="pgd", steps=3, batch_size=5,
              budgets={"additive": {"eps": 0.2}}, cache_dir=tmp_path)
    defense = create_purifier("gaussian", sigma=1.0)
    r = benchmark(m, data, defense, cascade=True, **kw)  # type: ignore[arg-type]
    assert r["clean_accuracy"] == 1.0
    blind_ok = unpack_mask(r["per_image"]["attacks"]["additive"]["blind"], 12)
    assert 0 < blind_ok.sum() < 12  # the blind attack takes some images, not all
    # the blind threat attacks every image; the adaptive one only the blind threat's survivors
    assert sizes == [5, 5, 2] + [int(blind_ok[s : s + 5].sum()) for s in (0, 5, 10)]
    (entry,) = tmp_path.glob("adaptive-*.npy")
    adv, xs = np.load(entry), data.as_float_nchw()
    np.testing.assert_array_equal(adv[~blind_ok], xs[~blind_ok])  # left as they are
    assert (np.abs(adv[blind_ok] - xs[blind_ok]).reshape(int(blind_ok.sum()), -1).max(1) > 0).all()
    with torch.no_grad():  # the column counts what the defense reads right of the examples among the survivors
        read = (m(defense(torch.from_numpy(adv))).argmax(1) == y).numpy()
    row = r["robust_accuracy"]["additive"]
    assert row["adaptive"] == pytest.approx(float((read & blind_ok).mean())) == row["worst"]
    survived = unpack_mask(r["per_image"]["attacks"]["additive"]["adaptive"], 12)
    assert not survived[~blind_ok].any()
    assert r["attack"]["cascade"] is True and "--cascade" in format_table(r)
    # the adaptive threat first: it attacks every image read right clean (all of them here); the blind examples
    # are read back from the cache
    sizes.clear()
    first = benchmark(m, data, defense, cascade=True, **{**kw, "threats": ["adaptive", "blind"]})  # type: ignore[arg-type]
    assert sizes == [5, 5, 2] and len(list(tmp_path.glob("adaptive-*.npy"))) == 2
    assert first["robust_accuracy"]["additive"]["blind"] == row["blind"]  # read back, unaffected by the cascade


def test_an_interrupted_run_resumes_after_its_last_finished_batch(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from edgepure.evaluate import robust
    from edgepure.purifiers import create_purifier

    x, y, m = _batch(12)
    data = _imageset(x, y)
    kw = dict(attacks=["additive"], threats=["adaptive"], method="pgd", steps=3, batch_size=5,
              budgets={"additive": {"eps": 0.3}})
    whole = benchmark(m, data, create_purifier("gaussian", sigma=1.0), **kw)  # type: ignore[arg-type]
    attacked: list[int] = []

    class Interrupted(robust.ATTACK_METHODS["pgd"]):  # type: ignore[misc,valid-type]
        limit = 2

        def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            if len(attacked) == self.limit:
                raise KeyboardInterrupt
            attacked.append(len(xb))
            return super().__call__(xb, yb)

    monkeypatch.setitem(robust.ATTACK_METHODS, "pgd", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        benchmark(m, data, create_purifier("gaussian", sigma=1.0), cache_dir=tmp_path, **kw)  # type: ignore[arg-type]
    parts = sorted(p.name.split(".")[1] for p in tmp_path.glob("adaptive-*.part*.npy"))
    assert attacked == [5, 5] and parts == ["part000000", "part000005"]  # the two finished batches are on disk
    Interrupted.limit = 3
    resumed = benchmark(m, data, create_purifier("gaussian", sigma=1.0), cache_dir=tmp_path, **kw)  # type: ignore[arg-type]
    assert attacked == [5, 5, 2]  # only the batch that was not finished is attacked
    assert resumed["robust_accuracy"] == whole["robust_accuracy"]  # the same examples as one uninterrupted run
    (entry,) = tmp_path.glob("*.npy")  # the whole entry replaces its batches
    assert np.load(entry).shape == (12, 3, 32, 32) and ".part" not in entry.name
    np.save(tmp_path / (entry.name[: -len(".npy")] + ".part000000.npy"), np.zeros((2, 2), np.float32))
    entry.unlink()  # a broken batch file is named, not scored
    with pytest.raises(ConfigError, match=r"part000000\.npy: a cached batch .* expected \(5, 3, 32, 32\)"):
        benchmark(m, data, create_purifier("gaussian", sigma=1.0), cache_dir=tmp_path, **kw)  # type: ignore[arg-type]


def _shared_run_setup(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """A 12-image adaptive run in batches of 5, its result and its examples; attacks from then on are recorded by
    their batch offsets, and ``hooks[offset]()`` runs before the attack of that batch."""
    from edgepure.evaluate import cache, robust

    x, y, m = _batch(12)
    data = _imageset(x, y)
    kw = dict(attacks=["additive"], threats=["adaptive"], method="pgd", steps=3, batch_size=5,
              budgets={"additive": {"eps": 0.3}})
    ref = tmp_path / "ref"
    whole = benchmark(m, data, create_purifier("gaussian", sigma=1.0), cache_dir=ref, **kw)  # type: ignore[arg-type]
    (entry,) = ref.glob("adaptive-*.npy")
    attacked: list[int] = []
    hooks: dict[int, object] = {}

    class Recorded(robust.ATTACK_METHODS["pgd"]):  # type: ignore[misc,valid-type]
        def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            attacked.append(self.seed)  # seed 0 + the batch's offset
            if self.seed in hooks:
                hooks[self.seed]()  # type: ignore[operator]
            return super().__call__(xb, yb)

    monkeypatch.setitem(robust.ATTACK_METHODS, "pgd", Recorded)
    polls: list[float] = []

    def sleep(seconds: float) -> None:  # a waiting run that never ends fails instead of hanging the tests
        polls.append(seconds)
        assert len(polls) < 500, "still waiting for a batch after 500 polls"
        time.sleep(0.01)

    monkeypatch.setattr(cache, "time", SimpleNamespace(sleep=sleep, time=time.time))
    run = tmp_path / "run"
    run.mkdir()

    def go(**extra: object) -> dict:  # type: ignore[type-arg]
        return benchmark(m, data, create_purifier("gaussian", sigma=1.0), cache_dir=run, **kw, **extra)  # type: ignore[arg-type]

    return whole, np.load(entry), entry.name[: -len(".npy")], run, attacked, hooks, go


def test_a_batch_another_process_holds_is_waited_for_not_attacked_again(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    whole, examples, stem, run, attacked, hooks, go = _shared_run_setup(tmp_path, monkeypatch)
    lock = run / f"{stem}.part000005.lock"
    lock.write_text("another-machine 999999999\n")  # a claim from elsewhere: it cannot be checked, so it is respected

    def the_other_process_finishes() -> None:
        np.save(run / f"{stem}.part000005.npy", examples[5:10])
        lock.unlink()

    hooks[10] = the_other_process_finishes
    result = go()
    assert attacked == [0, 10]  # batch 5 came from the other process
    assert result["robust_accuracy"] == whole["robust_accuracy"]
    assert sorted(p.name for p in run.iterdir()) == [f"{stem}.npy", "scores"]  # joined; no claims or batches left
    assert sorted(p.suffix for p in (run / "scores").iterdir()) == [".npy"] * 6  # clean and attacked readings, 3 each
    np.testing.assert_array_equal(np.load(run / f"{stem}.npy"), examples)


def test_a_batch_whose_holder_died_is_taken_over(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import socket
    import subprocess
    import sys

    whole, _, stem, run, attacked, hooks, go = _shared_run_setup(tmp_path, monkeypatch)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run / f"{stem}.part000005.lock").write_text(f"{socket.gethostname()} {holder.pid}\n")

        def the_holder_dies() -> None:
            holder.kill()
            holder.wait()

        hooks[10] = the_holder_dies
        result = go(progress=True)  # the bar says which batch it waits for
    finally:
        holder.kill()
        holder.wait()
    assert attacked == [0, 10, 5]  # left to the live holder at first, taken over once it was gone
    assert "waiting=batch 5 (another process)" in capsys.readouterr().err
    assert result["robust_accuracy"] == whole["robust_accuracy"]
    assert sorted(p.name for p in run.iterdir()) == [f"{stem}.npy", "scores"]


def test_a_batch_another_process_finishes_is_taken_as_soon_as_it_is_there(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A batch left to another process is scored when it appears, not only after this process's own batches (so the
    progress bar counts every finished batch)."""
    from edgepure.evaluate.cache import AdvCache, shared_batches

    store = AdvCache(tmp_path)
    other = torch.full((2, 3, 4, 4), 0.5)
    (tmp_path / "adaptive-k.part000000.lock").write_text("another-machine 999999999\n")

    def attack(s: int) -> torch.Tensor:
        if s == 2:  # while this process attacks its first batch, the other one finishes batch 0
            store.save_part("adaptive", "k", 0, other)
            (tmp_path / "adaptive-k.part000000.lock").unlink()
        return torch.full((2, 3, 4, 4), float(s))

    got = [(s, float(x[0, 0, 0, 0])) for s, x in shared_batches(store, "adaptive", "k", (6, 3, 4, 4), 2, attack)]
    assert got == [(2, 2.0), (0, 0.5), (4, 4.0)]


def test_an_entry_another_process_joined_is_read_once_not_attacked(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from edgepure.evaluate.cache import AdvCache, shared_batches

    store = AdvCache(tmp_path)
    whole = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 4, 4).contiguous()
    store.save("adaptive", "k", whole)  # another process finished every batch and joined them
    reads: list[str] = []
    load = store.load
    monkeypatch.setattr(store, "load", lambda *a: reads.append(a[0]) or load(*a))

    def attack(s: int) -> torch.Tensor:
        raise AssertionError(f"batch {s} was attacked again")

    got = {s: x for s, x in shared_batches(store, "adaptive", "k", (6, 3, 4, 4), 2, attack)}
    assert sorted(got) == [0, 2, 4]
    for s, x in got.items():
        torch.testing.assert_close(x, whole[s : s + 2])
    assert reads == ["adaptive"]  # the whole entry is read once, not once per batch


def test_a_run_again_reads_its_predictions_instead_of_purifying_again(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from edgepure.evaluate import robust

    x, y, m = _batch(12)
    data = _imageset(x, y)
    kw = dict(attacks=["additive"], threats=["blind", "adaptive"], method="pgd", steps=2, batch_size=5,
              budgets={"additive": {"eps": 0.3}}, cache_dir=tmp_path)
    purified: list[int] = []
    real = robust._defended_predict
    monkeypatch.setattr(robust, "_defended_predict", lambda c, p, xb, sd: purified.append(len(xb)) or real(c, p, xb, sd))
    first = benchmark(m, data, create_purifier("gaussian", sigma=1.0), **kw)  # type: ignore[arg-type]
    assert sum(purified) == 36  # clean, blind and adaptive: each image once
    readings = sorted((tmp_path / "scores").glob("*.npy"))
    assert len(readings) == 9 and not list((tmp_path / "scores").glob("*.lock"))
    purified.clear()
    again = benchmark(m, data, create_purifier("gaussian", sigma=1.0), **kw)  # type: ignore[arg-type]
    assert purified == [] and again["robust_accuracy"] == first["robust_accuracy"]
    assert again["per_image"] == first["per_image"]
    # another setting of the purifier or another noise seed is another pipeline: scored afresh
    for other, extra in ((create_purifier("gaussian", sigma=2.0), {}),
                         (create_purifier("gaussian", sigma=1.0), {"seed": 1})):
        purified.clear()
        benchmark(m, data, other, **{**kw, "threats": ["blind"], **extra})  # type: ignore[arg-type]
        assert sum(purified) >= 24
    # what is scored is what is on disk: a reading whose file is broken is named, not used
    victim = readings[0]
    np.save(victim, np.zeros(2, np.float32))
    with pytest.raises(ConfigError, match=r"scores/.*\.npy: cached predictions have shape \(2,\) float32, expected"):
        benchmark(m, data, create_purifier("gaussian", sigma=1.0), **kw)  # type: ignore[arg-type]
    victim.write_bytes(b"not an array")
    with pytest.raises(ConfigError, match="no readable array"):
        benchmark(m, data, create_purifier("gaussian", sigma=1.0), **kw)  # type: ignore[arg-type]


def test_a_batch_another_process_is_scoring_is_read_not_scored_again(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import socket
    import subprocess
    import sys

    from edgepure.evaluate import cache as cache_mod
    from edgepure.evaluate.cache import AdvCache, shared_scores

    monkeypatch.setattr(cache_mod, "time", SimpleNamespace(sleep=lambda s: time.sleep(0.01), time=time.time))
    store = AdvCache(tmp_path)
    batches = [(s, torch.full((2, 3, 4, 4), float(s))) for s in (0, 2, 4)]
    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / "k0.lock").write_text("another-machine 999999999\n")
    scored: list[int] = []

    def score(s: int, x: torch.Tensor) -> np.ndarray:
        scored.append(s)
        if s == 2:  # meanwhile the other process finishes batch 0
            store.save_scores("k0", np.array([7, 7]))
        return np.array([s, s])

    got = list(shared_scores(store, iter(batches), lambda s, x: f"k{s}", score))
    assert scored == [2, 4] and [(s, p.tolist()) for s, p in got] == [(2, [2, 2]), (0, [7, 7]), (4, [4, 4])]
    # a claim whose process is gone is taken over at the end
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / "scores" / "j2.lock").write_text(f"{socket.gethostname()} {holder.pid}\n")
        scored.clear()
        waited: list[int] = []

        def on_wait(s: int) -> None:
            waited.append(s)
            holder.kill()
            holder.wait()

        got = list(shared_scores(store, iter(batches), lambda s, x: f"j{s}", lambda s, x: np.array([s, s]), on_wait))
    finally:
        holder.kill()
        holder.wait()
    assert waited == [2] and [s for s, _ in got] == [0, 4, 2] and not list((tmp_path / "scores").glob("j*.lock"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_benchmark_on_cuda_matches_the_cpu() -> None:
    x, y, m = _batch(12)
    data = _imageset(x, y)
    kw = dict(attacks=["additive", "patch"], threats=["blind", "adaptive"], steps=3, batch_size=6)
    cpu = benchmark(m, data, create_purifier("nappure", kind="additive", steps=2), **kw)  # type: ignore[arg-type]
    gpu = benchmark(Templates(), data, create_purifier("nappure", kind="additive", steps=2), device="cuda", **kw)  # type: ignore[arg-type]
    assert gpu["clean_accuracy"] == cpu["clean_accuracy"]
    for a in ("additive", "patch"):
        for t in ("blind", "adaptive"):
            assert abs(gpu["robust_accuracy"][a][t] - cpu["robust_accuracy"][a][t]) <= 1 / 12 + 1e-9


def test_attack_method_lists_parse_and_bad_ones_are_user_errors() -> None:
    from edgepure.evaluate.robust import parse_attack_methods

    assert parse_attack_methods("apgd:100, pgd:40,pgd:4") == [("apgd", 100), ("pgd", 40), ("pgd", 4)]
    assert parse_attack_methods("apgd,pgd:40", steps=20) == [("apgd", 20), ("pgd", 40)]
    for bad in ("apgd", "fgsm:3", "pgd:0", "pgd:x", "apgd:5,apgd:5"):
        with pytest.raises(ConfigError, match="--blind-methods"):
            parse_attack_methods(bad)


def test_a_surrogate_keeps_the_defenses_weights_and_changes_only_what_is_asked() -> None:
    from edgepure.evaluate.robust import surrogate_of

    torch.manual_seed(0)
    defense = create_purifier("nappure", kind="distortion", mode="reference", prior="edm_unet_xs", pretrained=False)
    stand_in = surrogate_of(defense, steps=3)
    assert stand_in.config() == {**defense.config(), "steps": 3} and defense.config()["steps"] == 500
    own, got = defense.state_dict(), stand_in.state_dict()
    assert own.keys() == got.keys() and all(torch.equal(own[k], got[k]) for k in own)  # the random prior, not a new one
    with pytest.raises(ConfigError, match="surrogate: stepz is not a setting of the defense"):
        surrogate_of(defense, stepz=3)
