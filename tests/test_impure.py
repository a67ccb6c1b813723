"""IMPure: the interleaved groups, each group rebuilt without seeing its own pixels, determinism, export,
the perturbed training pairs and the training CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import edgepure
from edgepure.cli.main import app
from edgepure.models.impure import group_masks
from edgepure.models.registry import create_prior


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_prior("impure_xs").eval()
    for p in m.parameters():  # random weights everywhere (the zero-initialised output layers included)
        p.data.normal_(0, 0.2)
    return m


def test_groups_interleave_and_partition_the_image() -> None:
    m = group_masks(32, 4)
    assert m.shape == (4, 1, 32, 32) and torch.all(m.sum(0) == 1)
    assert all(float(g.sum()) == 256 for g in m)  # a quarter each
    assert m[0, 0, 0, 0] == 1 and m[1, 0, 0, 4] == 1 and m[2, 0, 4, 0] == 1 and m[3, 0, 4, 4] == 1
    with pytest.raises(ValueError, match="multiple"):
        group_masks(30, 4)


def test_a_group_is_rebuilt_without_its_own_pixels(net: torch.nn.Module) -> None:
    """Without the noised copy (keep = 0) and the seam conv, the output on group i does not depend on the
    input on group i: only the other three groups are seen."""
    keep, seam = net.keep, net.seam.weight.data.clone()
    net.keep = 0.0
    net.seam.weight.data.zero_()
    try:
        x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        out = net(x, torch.zeros_like(x))
        for g in range(4):
            m = group_masks(32, 4)[g, 0].bool()
            (grad,) = torch.autograd.grad((out[0, :, m]).sum(), x, retain_graph=True)
            assert float(grad[0][:, m].abs().max()) == 0.0
            assert float(grad[0][:, ~m].abs().sum()) > 0
    finally:
        net.keep = keep
        net.seam.weight.data.copy_(seam)


def test_purifier_is_deterministic_given_noise_and_exports(net: torch.nn.Module, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgepure.export.pipeline import export_pipeline

    pur = edgepure.create_purifier("impure", net=net)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    noise = pur.sample_noise(x, torch.Generator().manual_seed(3))
    assert noise is not None and noise.shape == x.shape
    a, b = pur(x, noise), pur(x, noise)
    assert torch.equal(a, b) and not torch.equal(a, pur(x, pur.sample_noise(x, torch.Generator().manual_seed(4))))
    assert a.shape == x.shape and 0 <= float(a.min()) and float(a.max()) <= 1
    assert pur.calls_per_image() == {"reconstruction_views": 4}
    imgs = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    m = export_pipeline(pur, edgepure.load_classifier(), tmp_path / "impure", imgs, overwrite=True,
                        purifier_info={"name": "impure", "config": pur.config()})
    assert m["models"]["purifier"]["parity"]["max_abs_diff"] < 1e-4 and m["purifier"]["noise"] == "input"


def test_training_pairs_cover_clean_and_every_family() -> None:
    from edgepure.training.impure import perturb_batch

    x = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 43, (10,), generator=torch.Generator().manual_seed(6))
    out = perturb_batch(x, y, edgepure.load_classifier(), torch.Generator().manual_seed(7))
    changed = (out - x).abs().flatten(1).amax(1) > 1e-6
    assert changed.tolist() == [False, False] + [True] * 8  # part 1 clean, parts 2-5 conv/patch/flow/additive
    assert float((out[8:] - x[8:]).abs().max()) <= 24 / 255 + 1e-6  # additive stays inside its budget
    assert 0 <= float(out.min()) and float(out.max()) <= 1


def test_train_impure_cli_learns_and_resumes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    args = ["train", "impure", "--data", "synth://?n=60", "--out", str(tmp_path / "run"), "--model", "impure_xs",
            "--epochs", "2", "--batch-size", "10", "--max-steps", "2", "--val-n", "20", "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    first = json.loads(r.stdout[r.stdout.index("{"):])
    assert first["epochs_done"] == 1 and {"val_accuracy", "val_accuracy_unpurified", "val_l1"} <= set(first["last"])
    r = runner.invoke(app, [*args[:-3], "--resume", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("{"):])["epochs_done"] == 2
    r = runner.invoke(app, ["train", "impure", "--data", "synth://?n=60", "--out", str(tmp_path / "bad"),
                            "--model", "impure_xs", "--batch-size", "4"])
    assert r.exit_code == 1 and "batch size" in r.output


def test_shipped_weights_undo_blind_attacks_on_rendered_signs() -> None:
    from edgepure.attacks import APGD
    from edgepure.data import open_dataset
    from edgepure.perturb import create_perturbation

    pur = edgepure.create_purifier("impure")  # the shipped impure_s, noised copy at t = 200
    assert pur.net.noise_t == 200 and pur.net.pretrained_cfg["preprocessing"]["size"] == [32, 32]
    data = open_dataset("synth", "val", n=48, seed=3)
    x, y = torch.from_numpy(data.as_float_nchw()), torch.from_numpy(data.labels)
    clf = edgepure.load_classifier()
    g = torch.Generator().manual_seed(0)
    for family in ("additive", "patch"):
        x_adv = APGD(clf, create_perturbation(family, "gtsrb"), steps=10, seed=0)(x, y).detach()
        with torch.no_grad():
            bare = float((clf(x_adv).argmax(1) == y).float().mean())
            purified = float((clf(pur(x_adv, pur.sample_noise(x_adv, g))).argmax(1) == y).float().mean())
        assert bare < 0.1 and purified > bare + 0.25, (family, bare, purified)
