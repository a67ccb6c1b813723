"""The latency budget, variant sets, temporal smoothing, latency statistics and ``edgepure bench``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgepure.cli.main import app
from edgepure.runtime.budget import BudgetController
from edgepure.runtime.errors import ConfigError, ModelError
from edgepure.runtime.smoothing import TemporalSmoother
from edgepure.runtime.stream import Runner, open_source, run_stream
from edgepure.runtime.stream.stats import LatencyHistogram
from edgepure.runtime.variants import list_variants, write_variants

cli = CliRunner()
NAMES, COSTS = ["k4", "k8", "k16"], [10.0, 20.0, 40.0]


def test_starts_with_the_strongest_variant_that_fits(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "edgepure.runtime.budget"):
        assert BudgetController(NAMES, COSTS, 25).name == "k8"
        assert BudgetController(NAMES, COSTS, 40).name == "k16"
        c = BudgetController(NAMES, COSTS, 5)
    assert c.name == "k4"
    assert "using k8" in caplog.text and "no variant fits" in caplog.text


def test_steps_down_under_load_and_back_up_when_it_passes(caplog: pytest.LogCaptureFixture) -> None:
    c = BudgetController(NAMES, COSTS, 45, window=5, headroom=0.8)
    assert c.name == "k16"
    with caplog.at_level(logging.INFO, "edgepure.runtime.budget"):
        # a neighbour process doubles every latency: k16 now takes 80 ms
        switches = [c.observe(80.0) for _ in range(5)]
    assert switches[:4] == [None] * 4 and switches[4] is not None
    # load 2×: k8 would take 40 ms ≤ 45, k4 20 ms: the strongest that fits is k8
    assert c.name == "k8" and "k16 → k8" in caplog.text
    for _ in range(20):  # k8 under the same load: 40 ms, fits; k16 predicted 80: stay
        assert c.observe(40.0) is None
    # the load goes away: k8 runs at its start-up 20 ms; k16 predicted 40 ≤ 0.8 × 45? no (36): stay
    for _ in range(10):
        assert c.observe(20.0) is None
    c2 = BudgetController(NAMES, COSTS, 60, window=5, headroom=0.8)
    for _ in range(5):
        c2.observe(70.0)  # k16 at 70 ms > 60: down to k8 (load 1.75: 35 ms)
    assert c2.name == "k8"
    for _ in range(5):
        c2.observe(20.0)  # load 1.0: k16 predicted 40 ≤ 48: up
    assert c2.name == "k16" and [(s.old, s.new) for s in c2.switches] == [("k16", "k8"), ("k8", "k16")]


def test_overload_with_no_cheaper_variant_stays() -> None:
    c = BudgetController(NAMES, COSTS, 5, window=3)
    for _ in range(9):
        assert c.observe(100.0) is None
    assert c.name == "k4"


def test_controller_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="positive"):
        BudgetController(NAMES, COSTS, 0)
    with pytest.raises(ConfigError, match="one start-up cost per variant"):
        BudgetController(NAMES, COSTS[:2], 10)
    with pytest.raises(ConfigError, match="headroom"):
        BudgetController(NAMES, COSTS, 10, headroom=1.5)


def test_runner_measures_variants_on_the_device(model_dirs: dict[str, Path]) -> None:
    generous = Runner.from_directory(model_dirs["set"], threads=1, budget_ms=1000.0)
    assert generous.names == ["plain", "median"] and generous.variant == "median"
    assert generous.costs is not None and all(c > 0 for c in generous.costs)
    tight = Runner.from_directory(model_dirs["set"], threads=1, budget_ms=1e-3)
    assert tight.variant == "plain"
    s = run_stream(open_source("synth://?n=30"), generous)
    assert s["budget"]["budget_ms"] == 1000.0 and s["variants"] == {"median": 30}
    assert set(s["budget"]["startup_ms"]) == {"plain", "median"}


def test_runner_switches_when_the_load_changes(model_dirs: dict[str, Path]) -> None:
    r = Runner.from_directory(model_dirs["set"], threads=1, budget_ms=1000.0, window=4)
    assert r.variant == "median"
    assert r.controller is not None
    r.controller.budget = 1e-3  # as if the device had slowed down a millionfold
    s = run_stream(open_source("synth://?n=12"), r)
    assert s["switches"] and s["switches"][0]["from"] == "median" and s["switches"][0]["to"] == "plain"
    assert s["variants"] == {"median": 4, "plain": 8}


def test_variant_sets_are_validated(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    assert [v.name for v in list_variants(model_dirs["set"])] == ["plain", "median"]
    assert [v.name for v in list_variants(model_dirs["plain"])] == ["plain"]
    (tmp_path / "a").mkdir()
    with pytest.raises(ModelError, match="neither manifest.json nor variants.json"):
        list_variants(tmp_path / "a")
    write_variants(tmp_path / "a", [("x", "../elsewhere")])
    with pytest.raises(ModelError, match="leaves the directory"):
        list_variants(tmp_path / "a")
    write_variants(tmp_path / "a", [("x", "x")])
    with pytest.raises(ModelError, match="has no"):
        list_variants(tmp_path / "a")
    (tmp_path / "a" / "variants.json").write_text("{broken")
    with pytest.raises(ModelError, match="corrupt"):
        list_variants(tmp_path / "a")


@pytest.mark.slow
def test_export_writes_a_variant_set_that_run_chooses_from(tmp_path: Path) -> None:
    out = tmp_path / "nap"
    r = cli.invoke(app, ["export", "--out", str(out), "--purifier", "nappure", "--kind", "additive",
                         "--purifier-arg", "prior=edm_unet_xs", "--purifier-arg", "pretrained=false",
                         "--steps", "2", "--steps", "1", "--n", "2"])
    assert r.exit_code == 0, r.output
    assert [v.name for v in list_variants(out)] == ["k1", "k2"]  # weakest first whatever the order given
    for k in (1, 2):
        m = json.loads((out / f"k{k}" / "manifest.json").read_text())
        assert m["purifier"]["config"]["steps"] == k
    r = cli.invoke(app, ["run", "synth://?n=6", "--model", str(out), "--headless", "--budget-ms", "10000", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["variants"] == {"k2": 6} and s["budget"]["startup_ms"]["k1"] < s["budget"]["startup_ms"]["k2"]
    r = cli.invoke(app, ["export", "--out", str(out), "--purifier", "nappure", "--steps", "1", "--steps", "2"])
    assert r.exit_code == 1 and "exists" in r.output


def test_smoothing_holds_the_answer_through_a_flipped_frame() -> None:
    s = TemporalSmoother(0.3)
    a, b = np.array([0.9, 0.1]), np.array([0.2, 0.8])
    for _ in range(5):
        out = s(a)
    assert out.argmax() == 0
    assert s(b).argmax() == 0  # one flipped frame does not flip the answer
    for _ in range(5):
        out = s(b)
    assert out.argmax() == 1
    s.reset()
    assert np.array_equal(s(b), b)
    assert np.array_equal(TemporalSmoother(1.0)(b), b)


def test_latency_histogram_percentiles_within_one_percent() -> None:
    rng = np.random.default_rng(0)
    values = rng.lognormal(0.5, 0.6, 5000)
    h = LatencyHistogram()
    for v in values:
        h.add(float(v))
    for q in (50, 95, 99):
        exact = np.percentile(values, q, method="inverted_cdf")
        assert abs(h.percentile(q) - exact) / exact < 0.011  # type: ignore[operator]
    assert h.counts.nbytes < 20_000  # constant memory, whatever the run's length
    assert LatencyHistogram().percentile(50) is None


def test_bench_reports_latency_throughput_and_overhead(model_dirs: dict[str, Path]) -> None:
    r = cli.invoke(app, ["bench", "--model", str(model_dirs["set"]), "--batch", "1,3", "--warmup", "1",
                         "--iters", "5", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    rows = {(x["variant"], x["role"], x["batch"]): x for x in rep["results"]}
    assert set(rows) == {(v, g, b) for v in ("plain", "median") for g in ("classifier", "pipeline") for b in (1, 3)
                         if not (v == "plain" and g == "pipeline")}
    row = rows[("median", "pipeline", 3)]
    assert row["calls_per_batch"] == 3 and row["graph_batch"] == 1
    assert 0 < row["bare"]["p50_ms"] <= row["bare"]["p95_ms"] <= row["bare"]["p99_ms"]
    assert row["throughput_per_s"] == pytest.approx(3 / (row["runtime_step"]["p50_ms"] / 1e3), rel=1e-2)
    r = cli.invoke(app, ["bench", "--model", str(model_dirs["plain"]), "--batch", "1,x"])
    assert r.exit_code == 1 and "comma-separated integers" in r.output
