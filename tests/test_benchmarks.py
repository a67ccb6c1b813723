"""The benchmark report script, in its smoke mode (synthetic signs, tiny settings): it measures, writes
BENCHMARKS.md, the figures and report.json, and the Markdown says what the JSON says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from report import parse_purifier  # noqa: E402
from report_render import pareto  # noqa: E402


def test_purifier_specs_parse_to_name_settings_and_label() -> None:
    assert parse_purifier("none") == ("none", "none", {})
    assert parse_purifier("nappure:kind=joint:steps=8") == ("nappure-joint-K8", "nappure", {"kind": "joint", "steps": 8})
    assert parse_purifier("gaussian:sigma=1.5") == ("gaussian-1.5", "gaussian", {"sigma": 1.5})


def test_pareto_front_keeps_only_undominated_points() -> None:
    pts = [(1.0, 20.0), (2.0, 30.0), (1.5, 10.0), (3.0, 25.0), (10.0, 60.0), (0.5, 5.0)]
    assert pareto(pts) == [5, 0, 1, 4]  # by latency; (1.5, 10) and (3, 25) are beaten by a faster, better point


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("report")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--smoke", "--out", str(out / "run"),
                        "--md", str(out / "BENCHMARKS.md"), "--figures", str(out / "figures")],
                       capture_output=True, text=True, env=env, cwd=out, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"out": out, "report": json.loads((out / "run" / "report.json").read_text()),
            "md": (out / "BENCHMARKS.md").read_text(), "stderr": r.stderr}


def test_smoke_report_measures_every_purifier_on_three_backends(smoke: dict[str, Any]) -> None:
    rep = smoke["report"]
    assert [r["label"] for r in rep["purifiers"]] == ["none", "median", "nappure-additive-K1"]
    for r in rep["purifiers"]:
        assert set(r["accuracy"]) == {"torch", "ort-fp32", "ort-int8"}
        threats = {"blind"} if r["purifier"] == "none" else {"blind", "adaptive"}
        for backend, acc in r["accuracy"].items():
            assert set(acc) == threats
            for threat, row in acc.items():
                assert set(row) == {"clean", "conv", "patch", "flow", "additive", "all", "mean"}
                assert all(0.0 <= v <= row["clean"] for k, v in row.items() if k != "clean")
        # the FP32 graph is the torch model (parity-checked): at most one of 8 images may flip per attack
        for threat in threats:
            t, o = r["accuracy"]["torch"][threat], r["accuracy"]["ort-fp32"][threat]
            assert all(abs(t[k] - o[k]) <= 1 / 8 + 1e-9 for k in t)
        assert all(ms > 0 for ms in r["latency_ms"].values()) and set(r["latency_ms"]) == {"torch", "ort-fp32", "ort-int8"}
        assert r["mflops_per_crop"] > 100  # the classifier alone is ~134 MFLOPs per 32×32 crop
    nap = rep["purifiers"][2]
    assert nap["mflops_per_crop"] > rep["purifiers"][0]["mflops_per_crop"]  # the prior's VJP is on top
    # one step (a prior VJP) after the denoised start (a plain prior forward; the additive default since edm_unet_s_guided)
    assert nap["calls_per_image"] == {"denoiser_with_gradient": 1, "denoiser": 1}
    assert rep["purifiers"][1]["calls_per_image"] == {}
    manifest = json.loads((smoke["out"] / "run" / "models" / "nappure-additive-K1-int8" / "manifest.json").read_text())
    assert manifest["precision"] == "int8"
    cache = smoke["out"] / "run" / "advcache"
    # one per attack family, shared by every purifier and backend; + the sweep's reference images (additive)
    assert len(list(cache.glob("blind-*.npy"))) == 6
    assert len(list(cache.glob("adaptive-*.npy"))) == 10  # per purifier (median, NAPPure) and attack
    assert rep["machine"]["matmul_peak_gflops"] > 0 and rep["machine"]["threads_used"] == 1


def test_smoke_report_markdown_and_figures_match_the_json(smoke: dict[str, Any]) -> None:
    rep, md = smoke["report"], smoke["md"]
    for name in ("pareto.png", "nappure_sweep.png"):
        data = (smoke["out"] / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"](figures/{name})" in md
    lines = md.splitlines()
    for r in rep["purifiers"]:
        for backend, label in (("torch", "torch eager"), ("ort-fp32", "ORT CPU FP32"), ("ort-int8", "ORT CPU INT8")):
            for threat in r["accuracy"][backend]:
                section = lines.index(next(s for s in lines if s.startswith(f"### {threat.capitalize()} threat")))
                row = next(s for s in lines[section:] if s.startswith(f"| {r['label']} | {label} |"))
                assert row.endswith(f"| **{100 * r['accuracy'][backend][threat]['mean']:.1f}** |")
        cost = next(s for s in lines if s.startswith(f"| {r['label']} |") and
                    f"classifier | {r['latency_ms']['torch']:.2f} |" in s)
        assert f"| {r['latency_ms']['ort-fp32']:.2f} | {r['latency_ms']['ort-int8']:.2f} |" in cost
    sweep = rep["sweep"]
    assert sweep["kind"] == "additive" and [row["steps"] for row in sweep["rows"]] == [1]
    assert sweep["reference"]["steps"] == 3 and f"| {sweep['reference']['steps']} (reference) |" in md
    assert rep["machine"]["cpu"] in md and f"{rep['machine']['matmul_peak_gflops']} GFLOP/s" in md


# every other benchmark script, with settings small enough for CI: it runs to the end and prints its table
SCRIPTS = {
    "runtime": (["--models", "{plain}", "--batches", "1", "--iters", "3", "--warmup", "1", "--out", "{tmp}/rt.json"],
                "| model | variant | graph |"),
    "flops": (["--models", "{median}", "--iters", "3", "--out", "{tmp}/flops.json"], "| pipeline | graph | MFLOPs / crop |"),
    "attacks": (["--data", "synth", "--n", "4", "--steps", "1", "--attack", "additive", "--threads", "1"], "additive"),
    "classifier": (["--synth-n", "43", "--threads", "1"], '"synthetic_test"'),
    "nappure": (["--latency", "--kind", "additive", "--steps", "1", "--repeat", "1", "--batch", "1", "--threads", "1"],
                '"ms_per_image"'),
    "nappure:jump": (["--data", "synth", "--images", "tune", "--n", "4", "--kind", "occlusion", "--jump", "0.05",
                      "--attack-steps", "1", "--threads", "1"], '"jump_sigma": 0.05'),
    "nappure:worst": (["--data", "synth", "--images", "tune", "--n", "4", "--kind", "additive", "--jump", "0.05",
                       "--blind-methods", "apgd:1,pgd:1", "--threads", "1"], '"worst"'),
    "nappure:worst-steps": (["--data", "synth", "--images", "tune", "--n", "4", "--kind", "additive", "--steps", "1",
                             "--blind-methods", "pgd:1", "--threads", "1"], '"pgd:1"'),
    "nappure:warp-ab": (["--warp-ab", "--kind", "distortion", "--steps", "1", "--repeat", "1", "--batch", "1",
                         "--threads", "1"], '"one-hot"'),
    "flow_prior:energy": (["energy", "--n", "2", "--draws", "1", "--threads", "1"], '"amplitude_px": 2.5'),
    "flow_prior:jump": (["jump", "--n", "2", "--threads", "1"], '"fitted_flow_cosine"'),
    "flow_prior:recover": (["recover", "--n", "2", "--steps", "1", "--set", "init_sigma=0.05", "--threads", "1"],
                           '"flow_cosine"'),
    "flow_prior:recover-warp": (["recover", "--n", "2", "--steps", "1", "--warp", "rotate", "--amplitude", "10",
                                 "--threads", "1"], '"warp": "rotate"'),
    "export": (["--purifiers", "median", "--batches", "1", "--repeats", "2", "--threads", "1", "--out", "{tmp}/exp"],
               "median"),
    "precision": (["--data", "synth", "--n", "4", "--calib-n", "4", "--purifiers", "none", "--attacks", "additive",
                   "--steps", "1", "--out", "{tmp}/prec", "--cache", "{tmp}/cache"], "none"),
    "purifiers": (["--smoke", "--purifiers", "none,median,hetero_diffusion:votes=2", "--out", "{tmp}/cmp"],
                  "| hetero_diffusion | votes=2 |"),
    "budget": (["--model", "{set}", "--budget-ms", "50", "--load-at", "1", "--load-for", "1", "--total", "4",
                "--hogs", "1", "--window", "1"], "start-up:"),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_scripts_run_in_smoke_settings(script: str, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    args, expected = SCRIPTS[script]
    fill = {**{k: str(v) for k, v in model_dirs.items()}, "tmp": str(tmp_path)}
    argv = [a.format(**fill) for a in args]
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script.split(':')[0]}.py"), *argv],
                       capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert expected in r.stdout, r.stdout[-2000:]


def test_a_finished_run_re_renders_from_its_json_with_a_note(smoke: dict[str, Any], tmp_path: Path) -> None:
    src = tmp_path / "report.json"
    src.write_text(json.dumps(smoke["report"]))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--from-json", str(src), "--md",
                        str(tmp_path / "B.md"), "--figures", str(tmp_path / "figures"), "--note", "Quiet machine."],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    md = (tmp_path / "B.md").read_text()
    assert "batch 1. Quiet machine." in md and md.replace(" Quiet machine.", "") == smoke["md"]
    assert json.loads(src.read_text())["note"] == "Quiet machine."


def test_a_finished_run_can_be_timed_again_in_one_pass(smoke: dict[str, Any], tmp_path: Path) -> None:
    src = tmp_path / "report.json"
    src.write_text(json.dumps(smoke["report"]))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--from-json", str(src), "--retime",
                        "--out", str(smoke["out"] / "run"), "--latency-iters", "3", "--latency-iters-torch", "2",
                        "--md", str(tmp_path / "B.md"), "--figures", str(tmp_path / "figures")],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(src.read_text())
    assert rep["latency_pass"] and "re-measured in one pass" in (tmp_path / "B.md").read_text()
    for old, new in zip(smoke["report"]["purifiers"], rep["purifiers"]):
        assert set(new["latency_ms"]) == set(old["latency_ms"]) and all(v > 0 for v in new["latency_ms"].values())
        assert new["accuracy"] == old["accuracy"]  # only the timings are measured again
    assert rep["sweep"]["reference"]["latency_ms"]["torch"] > 0


def test_soak_script_rewrites_its_table_between_the_markers(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    from soak import BEGIN, END

    page = tmp_path / "runtime.md"
    page.write_text(f"# Runtime\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--model", str(model_dirs["plain"]),
                        "--frames", "300", "--every", "100", "--warmup", "100", "--docs", str(page)],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    body = page.read_text()
    assert "old table" not in body and body.startswith("# Runtime\n\nbefore\n") and body.endswith(f"{END}\nafter\n")
    rows = [line for line in body.splitlines() if line.startswith("| ") and "frame" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "100", "200", "300"]
    assert "300 frames" in body and "--frames 300" in r.stdout
    page.write_text("no markers")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--model", str(model_dirs["plain"]),
                        "--frames", "10", "--docs", str(page)], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "no soak markers" in r.stderr


# benchmarks/robustness.py: the worst-case table of docs/robustness.md, in its smoke settings (the shipped
# signnet_s stands in for the adversarially trained classifier, so that its rows are measured too)
@pytest.fixture(scope="module")
def robustness(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from robustness import README_BEGIN, README_END

    out = tmp_path_factory.mktemp("robustness")
    (out / "README.md").write_text(f"# top\n\n{README_BEGIN}\nold table\n{README_END}\n\n## after\n")
    argv = [sys.executable, str(ROOT / "benchmarks" / "robustness.py"), "--smoke", "--at-classifier", "signnet_s",
            "--cache", str(out / "cache"), "--readme", str(out / "README.md"), "--md", str(out / "robustness.md")]
    r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=out,
                       timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"out": out, "argv": argv, "report": json.loads((out / "robustness.json").read_text()),
            "md": (out / "robustness.md").read_text(), "readme": (out / "README.md").read_text()}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_robustness_table_has_the_rows_and_columns_asked_and_the_json_numbers(robustness: dict[str, Any]) -> None:
    from robustness import FAMILIES

    rep, lines = robustness["report"], robustness["md"].splitlines()
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    assert [r["key"] for r in rep["rows"]] == ["none", "none+at", "median", "median+at", "hetero_diffusion"]
    header = next(s for s in lines if s.startswith("| defense |"))
    assert _cells(header) == ["defense", "classifier", "clean", "conv", "patch", "flow", "additive", "all",
                              "mean of four, worst", "… by majority of R", "R", "ORT CPU ms / crop"]
    for r in rep["rows"]:
        line = next(s for s in lines if s.startswith(f"| {r['defense']} | {r['classifier_label']} |"))
        cells = _cells(line)
        assert cells[2] == pct(r["clean"])
        for i, family in enumerate(("conv", "patch", "flow", "additive", "all")):
            adaptive = "–" if r["adaptive"] is None else pct(r["adaptive"][family])
            assert cells[3 + i] == f"{pct(r['blind'][family])} / {adaptive} / **{pct(r['worst'][family])}**"
            parts = [r["blind"][family]] + ([] if r["adaptive"] is None else [r["adaptive"][family]])
            assert r["worst"][family] <= min(parts) + 1e-9  # the per-image worst is never above a part
        assert r["mean_worst"] == pytest.approx(sum(r["worst"][f] for f in FAMILIES) / 4)
        assert cells[8] == f"**{pct(r['mean_worst'])}**" and cells[9] == pct(r["mean_worst_majority"])
        assert cells[10] == str(r["resubmit"]) and cells[11] == f"{r['latency_ms']:.2f}" and r["latency_ms"] > 0
    rows = {r["key"]: r for r in rep["rows"]}
    assert rows["hetero_diffusion"]["resubmit"] == 5 and rows["median"]["resubmit"] == 1  # R draws where it is random
    assert rows["none"]["adaptive"] is None and rows["median"]["adaptive"] is not None
    assert rows["none+at"]["classifier"] == "signnet_s" and rows["none"]["classifier"] == "signnet_s_cutmix"
    assert {r["classifier_label"] for r in rep["rows"]} == {"signnet_s_cutmix (standard)", "signnet_s (AT)"}
    md = robustness["md"]
    assert f"`{rep['command']}`" in md and rep["date"] in md and "--smoke" in rep["command"]
    assert f"n = {rep['n']}" in md and f"seed {rep['settings']['seed']}" in md
    assert f"±{rep['sampling_error_points']:.1f}" in md and "per image the worst of blind and adaptive" in md
    assert all(c in md for r in rep["rows"] for c in r["commands"])
    # the rows a partial run leaves out are named, so a page of some rows never reads as the whole table
    assert "nappure-joint-K8" in rep["not_run"] and "none" not in rep["not_run"]
    assert "Not measured in this run: " + ", ".join(rep["not_run"]) in md


def test_robustness_rows_resume_and_a_subset_is_rendered_alone(robustness: dict[str, Any]) -> None:
    out = robustness["out"]
    assert sorted(p.stem for p in (out / "cache" / "rows").glob("*.json")) == sorted(
        r["key"] for r in robustness["report"]["rows"])
    argv = [*robustness["argv"][:-1], str(out / "subset.md"), "--rows", "median+at"]
    r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=out,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "median+at: done earlier" in r.stderr
    sub = json.loads((out / "subset.json").read_text())
    assert sub["rows"] == [next(x for x in robustness["report"]["rows"] if x["key"] == "median+at")]
    # a row measured again without its latency: the accuracies come back from the cache, the latency prints "—"
    argv = [*robustness["argv"][:-1], str(out / "nolat.md"), "--rows", "median", "--no-latency", "median"]
    r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=out,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = json.loads((out / "nolat.json").read_text())["rows"]
    old = next(x for x in robustness["report"]["rows"] if x["key"] == "median")
    assert row["latency_ms"] is None and row["worst"] == old["worst"] and row["adaptive"] == old["adaptive"]
    line = next(s for s in (out / "nolat.md").read_text().splitlines() if s.startswith("| median |"))
    assert _cells(line)[-1] == "—"
    # a row is kept for the classifier's weights, not its name: a checkpoint trained further is measured again
    kept = {k: json.loads((out / "cache" / "rows" / f"{k}.json").read_text()) for k in ("none", "none+at")}
    assert kept["none"]["settings_of_run"]["weights"] != kept["none+at"]["settings_of_run"]["weights"]
    kept["none"]["settings_of_run"]["weights"] = "an earlier checkpoint"
    (out / "cache" / "rows" / "none.json").write_text(json.dumps(kept["none"]))
    argv = [*robustness["argv"][:-1], str(out / "again.md"), "--rows", "none"]
    r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=out,
                       timeout=300)
    assert r.returncode == 0 and "none: done earlier" not in r.stderr and "none: blind" in r.stderr, r.stderr[-3000:]
    bad = subprocess.run([*robustness["argv"], "--rows", "median,bilateral"], capture_output=True, text=True,
                         cwd=out, timeout=300)
    assert bad.returncode != 0 and "bilateral" in bad.stderr and "hetero_diffusion+at" in bad.stderr


def test_robustness_marks_the_rows_of_an_untrained_at_classifier(robustness: dict[str, Any]) -> None:
    from robustness import at_classifier, not_trained_row, render

    assert at_classifier(None, shipped=["signnet_s", "signnet_s_at"]) == "signnet_s_at"
    assert at_classifier(None, shipped=["signnet_s"]) is None
    assert at_classifier("runs/at/best.safetensors", shipped=[]) == "runs/at/best.safetensors"
    rep = json.loads(json.dumps(robustness["report"]))
    rep["rows"] = [r if not r["key"].endswith("+at") else not_trained_row(r["key"], "signnet_s_at")
                   for r in rep["rows"]]
    lines = render(rep).splitlines()
    for defense in ("no defense", "median"):
        line = next(s for s in lines if s.startswith(f"| {defense} | signnet_s_at (AT) |"))
        assert _cells(line)[2] == "not yet trained" and set(_cells(line)[3:]) == {"–"}
    assert next(s for s in lines if s.startswith("| median | signnet_s_cutmix (standard) |"))


def test_robustness_rewrites_the_readme_block_and_only_it(robustness: dict[str, Any]) -> None:
    from robustness import FAMILIES

    readme, rep = robustness["readme"], robustness["report"]
    assert readme.startswith("# top\n\n") and readme.endswith("\n\n## after\n") and "old table" not in readme
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    for r in rep["rows"]:
        fams = " / ".join(pct(r["worst"][f]) for f in FAMILIES)
        assert f"| {r['defense']} | {r['classifier_label']} | {pct(r['clean'])} | {fams} | **{pct(r['mean_worst'])}** |" \
            in readme
    assert "Not measured yet: " + ", ".join(rep["not_run"]) in readme


def test_robustness_refuses_a_readme_without_markers_before_measuring(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# a README without the markers\n")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "robustness.py"), "--smoke", "--cache",
                        str(tmp_path / "cache"), "--md", str(tmp_path / "r.md"), "--readme", str(tmp_path / "README.md")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "expected the markers" in r.stderr
    assert not (tmp_path / "cache").exists() and (tmp_path / "README.md").read_text() == "# a README without the markers\n"
