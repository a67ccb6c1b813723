"""NCIS and its blind-spot network: the blind spot holds exactly, the update rule, determinism, range,
export, and self-supervised training through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import edgepure
from edgepure.cli.main import app
from edgepure.models.registry import create_prior
from edgepure.purifiers.ncis import NCIS
from edgepure.runtime.errors import ConfigError


@pytest.fixture(scope="module")
def bsn() -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_prior("bsn_xs", pretrained=False).eval()
    for p in net.parameters():  # random, large weights: any leak of the centre pixel would show
        p.data.normal_(0, 0.5)
    return net


@pytest.mark.parametrize("where", [(5, 7), (0, 0), (31, 16)])
def test_output_pixel_never_depends_on_its_own_input_pixel(bsn: torch.nn.Module, where: tuple[int, int]) -> None:
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    i, j = where
    bsn(x)[0, :, i, j].sum().backward()
    g = x.grad[0]
    assert float(g[:, i, j].abs().max()) == 0.0  # the blind spot, for every channel
    assert float(g.abs().sum()) > 0  # but the neighbourhood counts
    ring = g[:, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2].abs().sum()
    assert float(ring) > 0


def test_iterative_smoothing_is_the_special_case_alpha_zero(bsn: torch.nn.Module) -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    gs = edgepure.create_purifier("gaussian", sigma=1.0, kernel_size=5)
    plain = NCIS(bsn, iterations=2, sigma=1.0, kernel_size=5, alpha=0.0)
    assert torch.allclose(plain(x), gs(gs(x)), atol=1e-6)
    with pytest.raises(ConfigError, match="iterations must be an integer ≥ 1, got 0"):
        NCIS(bsn, iterations=0)
    full = NCIS(bsn, iterations=2, alpha=1.0)
    out = full(x)
    assert torch.equal(out, full(x)) and out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    assert not torch.allclose(out, plain(x))  # the blind-spot detail is added back
    assert full.calls_per_image() == {"blind_spot_net": 2} and plain.calls_per_image() == {"blind_spot_net": 0}


def test_settings_round_trip_and_bad_settings(bsn: torch.nn.Module) -> None:
    p = edgepure.create_purifier("ncis", pretrained=False, bsn="bsn_xs", iterations=2, alpha=0.5)
    assert p.config() == {"iterations": 2, "sigma": 1.0, "kernel_size": 5, "alpha": 0.5}
    assert edgepure.create_purifier("ncis").config() == {"iterations": 3, "sigma": 1.0, "kernel_size": 5, "alpha": 0.5}
    with pytest.raises(ConfigError, match="odd kernel_size"):
        NCIS(bsn, kernel_size=4)
    with pytest.raises(ConfigError, match="alpha"):
        NCIS(bsn, alpha=-1.0)


def test_exports_to_onnx_with_parity(bsn: torch.nn.Module, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgepure.export.pipeline import export_pipeline

    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    pur = NCIS(bsn, iterations=2)
    m = export_pipeline(pur, edgepure.load_classifier(), tmp_path / "ncis", x, overwrite=True,
                        purifier_info={"name": "ncis", "config": pur.config()})
    assert m["models"]["purifier"]["parity"]["max_abs_diff"] < 1e-4 and m["purifier"]["stochastic"] is False


def test_train_blindspot_cli_learns_and_resumes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    args = ["train", "blindspot", "--data", "synth://?n=64", "--out", str(tmp_path / "run"), "--model", "bsn_xs",
            "--epochs", "2", "--batch-size", "16", "--max-steps", "4", "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    first = json.loads(r.stdout[r.stdout.index("{"):])
    assert first["epochs_done"] == 1 and {"mse@0", "mse@16"} <= set(first["last"])
    for tag in ("best", "last", "last_ema"):
        assert (tmp_path / "run" / f"{tag}.safetensors").is_file()
    r = runner.invoke(app, [*args[:-3], "--resume", "--json"])  # the second epoch, from the checkpoint
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("{"):])["epochs_done"] == 2
    r = runner.invoke(app, [*args[:-3], "--resume", "--seed", "1"])
    assert r.exit_code == 1 and "seed" in r.output


def test_shipped_ncis_undoes_a_blind_additive_attack_better_than_smoothing_alone() -> None:
    from edgepure.attacks import APGD
    from edgepure.data import open_dataset
    from edgepure.perturb import create_perturbation

    data = open_dataset("synth", "val", n=48, seed=3)
    x, y = torch.from_numpy(data.as_float_nchw()), torch.from_numpy(data.labels)
    clf = edgepure.load_classifier()
    x_adv = APGD(clf, create_perturbation("additive", "gtsrb"), steps=10, seed=0)(x, y).detach()
    ncis = edgepure.create_purifier("ncis")
    with torch.no_grad():
        acc = {name: float((clf(p(z)).argmax(1) == y).float().mean()) for name, p, z in
               [("bare", torch.nn.Identity(), x_adv), ("ncis", ncis, x_adv), ("ncis_clean", ncis, x)]}
    assert acc["bare"] < 0.1 and acc["ncis"] > acc["bare"] + 0.2 and acc["ncis_clean"] >= 0.9, acc
