import json
from pathlib import Path

from typer.testing import CliRunner

from conftest import FIXTURE_CLASSES
from edgepure import __version__
from edgepure.cli.main import app

runner = CliRunner()


def test_version() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"edgepure {__version__}"


def test_data_info_json(gtsrb_dir: Path) -> None:
    r = runner.invoke(app, ["data", "info", "--data", str(gtsrb_dir), "--val-fraction", "0.25", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["kind"] == "gtsrb" and info["trainval"] == info["train"] + info["val"] == 48
    assert info["classes"] == len(FIXTURE_CLASSES) and info["test"] == 8


def test_data_render(tmp_path: Path) -> None:
    out = tmp_path / "signs"
    r = runner.invoke(app, ["data", "render", str(out), "--n", "12", "--seed", "3"])
    assert r.exit_code == 0, r.output
    lines = (out / "labels.csv").read_text().splitlines()
    assert lines[0] == "filename,class_id,class_name" and len(lines) == 13
    assert len(list(out.glob("*.ppm"))) == 12


def test_train_then_eval_a_checkpoint(gtsrb_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "classifier", "--data", str(gtsrb_dir), "--out", str(run), "--model", "signnet_xs",
                            "--epochs", "1", "--batch-size", "8", "--max-steps", "2", "--val-fraction", "0.25", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["epochs_done"] == 1 and 0.0 <= summary["best_val_accuracy"] <= 1.0
    r = runner.invoke(app, ["eval", "clean", "--data", str(gtsrb_dir), "--split", "test", "--model", str(run), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["n"] == 8 and 0.0 <= res["accuracy"] <= 1.0 and res["split"] == "test"


def test_user_errors_print_without_traceback(tmp_path: Path) -> None:
    r = runner.invoke(app, ["data", "info", "--data", str(tmp_path / "missing")])
    assert r.exit_code == 1
    assert "error:" in r.stderr and "no such file or directory" in r.stderr
    assert "Traceback" not in r.output


def test_bad_model_file_is_a_user_error(gtsrb_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"garbage")
    (tmp_path / "model.json").write_text(json.dumps({"name": "signnet_xs"}))
    r = runner.invoke(app, ["eval", "clean", "--data", str(gtsrb_dir), "--model", str(bad)])
    assert r.exit_code == 1 and "not a readable safetensors file" in r.stderr


def test_invalid_choice_is_rejected() -> None:
    r = runner.invoke(app, ["eval", "clean", "--data", "synth", "--split", "dev"])
    assert r.exit_code == 2


def test_models_list_json() -> None:
    r = runner.invoke(app, ["models", "list", "--json"])
    assert r.exit_code == 0
    rows = {m["name"]: m for m in json.loads(r.stdout)["models"]}
    assert rows["signnet_s_cutmix"]["kind"] == "classifier" and rows["signnet_s_cutmix"]["default"]
    assert rows["signnet_s"]["kind"] == "classifier" and not rows["signnet_s"]["default"]
    assert rows["edm_unet_s"]["kind"] == "prior" and rows["nappure"]["kind"] == "purifier"


def test_eval_robust_takes_purifier_settings(tiny_run: Path) -> None:
    args = ["eval", "robust", "--data", "synth", "--n", "2", "--model", str(tiny_run), "--attack", "additive",
            "--threat", "blind", "--steps", "1", "--json", "--defense", "nappure", "--kind", "additive",
            "--defense-arg", "steps=1", "--defense-arg", 'prior="edm_unet_xs"', "--defense-arg", "pretrained=false"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.stdout)["defense_config"]
    assert cfg["kind"] == "additive" and cfg["steps"] == 1 and cfg["mode"] == "fixed"
    r = runner.invoke(app, args[:-6] + ["--defense-arg", "steps"])
    assert r.exit_code == 1 and "expects key=value" in r.stderr
    no_defense = [a for a in args if a not in ("--defense", "nappure")]
    r = runner.invoke(app, no_defense)
    assert r.exit_code == 1 and "without --defense" in r.stderr
    r = runner.invoke(app, args + ["--defense-arg", "lam9=1"])
    assert r.exit_code == 1 and "unknown setting" in r.stderr


def test_eval_robust_crafts_adaptive_examples_through_a_surrogate(tiny_run: Path) -> None:
    args = ["eval", "robust", "--data", "synth", "--n", "2", "--model", str(tiny_run), "--attack", "additive",
            "--threat", "adaptive", "--steps", "1", "--defense", "nappure", "--kind", "additive",
            "--defense-arg", "mode=reference", "--defense-arg", "steps=3", "--defense-arg", 'prior="edm_unet_xs"',
            "--defense-arg", "pretrained=false"]
    r = runner.invoke(app, args + ["--surrogate-arg", "steps=1", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["defense_config"]["steps"] == 3 and res["defense_config"]["mode"] == "reference"
    stand_in = res["surrogate"]["defense_config"]
    assert res["surrogate"]["defense"] == "nappure" and stand_in == {**res["defense_config"], "steps": 1}
    r = runner.invoke(app, args + ["--surrogate-arg", "steps=1"])
    assert r.exit_code == 0 and "crafted through the surrogate nappure (steps=1)" in r.stdout
    r = runner.invoke(app, args + ["--surrogate-arg", "steps=1", "--skip-misread"])
    assert r.exit_code == 0 and "attacked only the images read right clean" in r.stdout
    r = runner.invoke(app, args + ["--surrogate-arg", "steps=1", "--skip-misread", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["attack"]["skip_misread"] is True
    r = runner.invoke(app, args + ["--surrogate-arg", "steps=1", "--cascade", "--threat", "blind,adaptive", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["threats"] == ["blind", "adaptive"] and res["attack"]["cascade"] is True
    assert res["robust_accuracy"]["additive"]["adaptive"] == \
        res["robust_accuracy"]["additive"]["worst"]
    r = runner.invoke(app, args + ["--surrogate-arg", "stepz=1"])
    assert r.exit_code == 1 and "surrogate: stepz is not a setting of the defense" in r.stderr
    r = runner.invoke(app, args[:8] + ["--surrogate-arg", "steps=1"])  # no --defense
    assert r.exit_code == 1 and "--surrogate-arg given without a defense" in r.stderr
    r = runner.invoke(app, [a if a != "adaptive" else "blind" for a in args] + ["--surrogate-arg", "steps=1"])
    assert r.exit_code == 1 and "used only by the adaptive threats" in r.stderr


def test_eval_worst_combines_separate_runs(tiny_run: Path, tmp_path: Path) -> None:
    base = ["eval", "robust", "--data", "synth", "--n", "6", "--model", str(tiny_run), "--defense", "median",
            "--attack", "additive", "--steps", "2", "--json"]
    r = runner.invoke(app, base + ["--threat", "blind,bpda"])
    assert r.exit_code == 0, r.output
    both = json.loads(r.stdout)
    for threat in ("blind", "bpda"):
        r = runner.invoke(app, base + ["--threat", threat])
        assert r.exit_code == 0, r.output
        (tmp_path / f"{threat}.json").write_text(r.stdout)
    runs = [str(tmp_path / "blind.json"), str(tmp_path / "bpda.json")]
    r = runner.invoke(app, ["eval", "worst", *runs, "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["runs"] == ["blind", "bpda"] and res["clean_accuracy"] == both["clean_accuracy"]
    assert res["robust_accuracy"]["additive"] == {"blind:blind": both["robust_accuracy"]["additive"]["blind"],
                                                  "bpda:bpda": both["robust_accuracy"]["additive"]["bpda"],
                                                  "worst": both["robust_accuracy"]["additive"]["worst"]}
    r = runner.invoke(app, ["eval", "worst", *runs])
    assert r.exit_code == 0 and "average of worst" in r.stdout and "bpda:bpda" in r.stdout
    old = {k: v for k, v in both.items() if k != "per_image"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    r = runner.invoke(app, ["eval", "worst", runs[0], str(tmp_path / "old.json")])
    assert r.exit_code == 1 and "old.json: has no per_image record" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, ["eval", "worst", runs[0], str(tmp_path / "missing.json")])
    assert r.exit_code == 1 and "missing.json: no such file" in r.stderr
    (tmp_path / "bad.json").write_text("{not json")
    r = runner.invoke(app, ["eval", "worst", runs[0], str(tmp_path / "bad.json")])
    assert r.exit_code == 1 and "bad.json: not a JSON file" in r.stderr
    r = runner.invoke(app, base[:8] + ["--attack", "additive", "--steps", "2", "--json", "--threat", "blind"])
    (tmp_path / "none.json").write_text(r.stdout)  # no defense: another pipeline
    r = runner.invoke(app, ["eval", "worst", runs[0], str(tmp_path / "none.json")])
    assert r.exit_code == 1 and "differ in the defense" in r.stderr


def test_eval_robust_writes_its_report(tiny_run: Path, tmp_path: Path) -> None:
    run = tiny_run
    out = tmp_path / "report"
    r = runner.invoke(app, ["eval", "robust", "--data", "synth", "--n", "6", "--model", str(run), "--defense", "median",
                            "--attack", "additive,patch", "--threat", "blind,bpda", "--steps", "2", "--out", str(out),
                            "--examples", "2", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert set(res["robust_accuracy"]) == {"additive", "patch"}
    assert set(res["robust_accuracy"]["patch"]) == {"blind", "bpda", "worst"}
    for name in ("results.json", "results.csv", "robust_accuracy.png", "examples.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "results.json").read_text())["n"] == 6
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 2 * 3


def test_eval_robust_rejects_unknown_names() -> None:
    r = runner.invoke(app, ["eval", "robust", "--data", "synth", "--attack", "rain"])
    assert r.exit_code == 1 and "--attack: unknown rain" in r.stderr
    r = runner.invoke(app, ["eval", "robust", "--data", "synth", "--n", "2", "--defense", "magic", "--model", "signnet_xs"])
    assert r.exit_code == 1


def test_eval_clean_refuses_a_class_count_mismatch(cifar_dir: Path) -> None:
    r = runner.invoke(app, ["eval", "clean", "--data", str(cifar_dir), "--split", "test"])
    assert r.exit_code == 1 and "the model has 43 classes, the data set 10" in r.stderr


def test_eval_robust_checks_the_device() -> None:
    import torch

    base = ["eval", "robust", "--data", "synth", "--n", "2", "--model", "signnet_xs", "--attack", "additive"]
    r = runner.invoke(app, base + ["--device", "tpu"])
    assert r.exit_code == 1 and "expected cpu, cuda or cuda:N" in r.stderr
    r = runner.invoke(app, base + ["--device", "gpu:zero"])
    assert r.exit_code == 1 and "not a device" in r.stderr
    if not torch.cuda.is_available():
        r = runner.invoke(app, base + ["--device", "cuda"])
        assert r.exit_code == 1 and "PyTorch sees no CUDA device" in r.stderr and "Traceback" not in r.stderr


def test_train_checks_the_device_before_writing_anything(tmp_path: Path) -> None:
    import torch

    for cmd in ("classifier", "prior", "impure", "nappure"):
        out = tmp_path / cmd
        r = runner.invoke(app, ["train", cmd, "--data", "synth", "--out", str(out), "--device", "tpu"])
        assert r.exit_code == 1 and "expected cpu, cuda or cuda:N" in r.stderr and not out.exists()
        if not torch.cuda.is_available():
            r = runner.invoke(app, ["train", cmd, "--data", "synth", "--out", str(out), "--device", "cuda:0"])
            assert r.exit_code == 1 and "PyTorch sees no CUDA device" in r.stderr and not out.exists()
