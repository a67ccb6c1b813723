"""The export side and the CLI as a whole, hardened: K = 0 refused before any work, every command naming the
extra it lacks, seeds and sizes checked, ``--force`` replacing only what edgepure wrote, and the staging
directories of killed exports cleaned up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import edgepure
from conftest import blocked_imports
from edgepure.cli.common import missing_extra, user_errors
from edgepure.cli.main import app
from edgepure.runtime.errors import ConfigError, MissingDependencyError

runner = CliRunner()


def commands() -> Iterator[tuple[list[str], Any]]:
    """Every command of the ``edgepure`` app, as (its words, its click command), sub-commands included."""
    def walk(cmd: Any, words: list[str]) -> Iterator[tuple[list[str], Any]]:
        if hasattr(cmd, "commands"):  # a group
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*words, name])
        else:
            yield words, cmd

    yield from walk(typer.main.get_command(app), [])


class TinyClassifier(torch.nn.Module):
    """The cheapest classifier to export: a 3×3 convolution, global pooling and a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 43)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.fc(self.conv(x).mean((2, 3)))


def export_tiny(out: Path, overwrite: bool = False) -> dict[str, Any]:
    from edgepure.export.pipeline import export_pipeline

    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    return export_pipeline(None, TinyClassifier().eval(), out, images, class_names=[f"c{i}" for i in range(43)],
                           overwrite=overwrite)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    export_tiny(out)
    return out


# --- K = 0 -------------------------------------------------------------------------------------------------

@pytest.fixture
def no_classifier(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if the export loads its classifier: the options must be refused before any work."""
    import edgepure.models.loading as loading

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the classifier was loaded before the options were checked")

    monkeypatch.setattr(loading, "load_classifier_source", refuse)


@pytest.mark.parametrize("args", [
    ["--steps", "0"], ["--steps", "4", "--steps", "0"], ["--steps", "-1"], ["--purifier-arg", "steps=0"],
    ["--purifier-arg", "steps=-2"], ["--purifier-arg", "steps=2.5"], ["--purifier-arg", "steps=true"],
])
def test_export_refuses_steps_below_one_before_any_work(tmp_path: Path, no_classifier: None, args: list[str]) -> None:
    out = tmp_path / "np"
    r = runner.invoke(app, ["export", "--purifier", "nappure", "--out", str(out), *args])
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("error: ") and "steps" in r.stderr and "≥ 1" in r.stderr, r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "settings", "match"), [
    ("nappure", {"steps": 0}, "steps must be an integer ≥ 1"),
    ("nappure", {"steps": -3, "mode": "reference"}, "steps must be an integer ≥ 1"),
    ("nappure", {"steps": 2.5}, "steps must be an integer ≥ 1"),
    ("coup", {"steps": 0}, "steps must be an integer ≥ 1"),
    ("coup", {"steps": True}, "steps must be an integer ≥ 1"),
    ("ncis", {"iterations": 0}, "iterations must be an integer ≥ 1"),
    ("hetero_diffusion", {"calls": 0}, "calls must be an integer ≥ 1"),
])
def test_fixed_step_purifiers_refuse_fewer_than_one_step(name: str, settings: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        edgepure.create_purifier(name, pretrained=False, **settings)


# --- missing extras ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("module", "package", "extra"), [
    ("torch", "torch", "torch"), ("torch.nn", "torch", "torch"), ("onnx", "onnx", "torch"),
    ("safetensors", "safetensors", "torch"), ("PIL", "pillow", "torch"), ("onnxruntime", "onnxruntime", "ort"),
    ("cv2", "opencv-python-headless", "camera"),
])
def test_a_missing_optional_package_names_its_extra(module: str, package: str, extra: str) -> None:
    err = missing_extra(ModuleNotFoundError(f"No module named {module!r}", name=module))
    assert isinstance(err, MissingDependencyError) and err.package == package
    assert f"'{package}'" in str(err) and f"edgepure[{extra}]" in str(err)


def test_other_import_errors_stay_bugs() -> None:
    assert missing_extra(ModuleNotFoundError("No module named 'yaml'", name="yaml")) is None
    assert missing_extra(ModuleNotFoundError("No module named 'edgepure.nope'", name="edgepure.nope")) is None
    # an installed package that fails to import is broken, not missing
    assert missing_extra(ImportError("cannot import name 'x' from 'torch'", name="torch")) is None

    @user_errors
    def needs(module: str) -> None:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    with pytest.raises(typer.Exit):
        needs("torch")
    with pytest.raises(ModuleNotFoundError):
        needs("yaml")


# commands that must work (or fail cleanly) on a device without PyTorch or onnx
TORCH_FREE = {"run", "bench", "build", "data info", "data render"}

WALK = blocked_imports("torch", "onnx") + textwrap.dedent("""
    import json
    from typer.testing import CliRunner
    from edgepure.cli.main import app
    runner = CliRunner()
    results = {}
    for words in json.loads(sys.argv[1]):
        r = runner.invoke(app, words)
        exc = r.exception if r.exception is not None and not isinstance(r.exception, SystemExit) else None
        results[" ".join(words)] = {"code": r.exit_code, "stderr": r.stderr, "exception": repr(exc) if exc else None}
    print(json.dumps(results))
""")


def _walk_without_torch(invocations: list[list[str]]) -> dict[str, dict[str, Any]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", WALK, json.dumps(invocations)], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _required_args(words: list[str], cmd: Any, values: dict[str, list[str]]) -> list[str]:
    args: list[str] = []
    for p in cmd.params:
        if not p.required:
            continue
        assert p.name in values, f"give 'edgepure {' '.join(words)}' a value for its required {p.name!r} here"
        args += values[p.name] if p.param_type_name == "argument" else [p.opts[0], *values[p.name]]
    return args


def test_every_command_without_torch_names_the_extra(tmp_path: Path, tiny_model: Path) -> None:
    results = [tmp_path / "a.json", tmp_path / "b.json"]
    for p in results:
        p.write_text("{}")
    values = {"out": [str(tmp_path / "out")], "data": ["synth"], "directory": [str(tiny_model)],
              "model": [str(tiny_model)], "path": [str(tiny_model)], "input": ["synth://?n=1"],
              "results": [str(p) for p in results]}
    extra = {"run": ["--headless"], "bench": ["--warmup", "1", "--iters", "1"], "data render": ["--n", "2"],
             "calibrate": ["--n", "2", "--eval-n", "0"]}
    runs = {" ".join(words): [*words, *_required_args(words, cmd, values), *extra.get(" ".join(words), [])]
            for words, cmd in commands()}
    helps = [["--help"]] + [[*words, "--help"] for words, _ in commands()]
    found = _walk_without_torch(helps + list(runs.values()))
    for words in helps:
        r = found[" ".join(words)]
        assert r["code"] == 0 and r["exception"] is None, (words, r)
    assert len(runs) >= 18
    for name, words in runs.items():
        r = found[" ".join(words)]
        assert r["exception"] is None, (name, r)  # it would be a traceback
        if name in TORCH_FREE:
            assert "edgepure[torch]" not in r["stderr"], (name, r)
        else:
            errors = [line for line in r["stderr"].splitlines() if line.startswith("error: ")]
            assert r["code"] == 1 and errors, (name, r)
            assert "not installed" in errors[-1] and "edgepure[torch]" in errors[-1], (name, r)


# --- seeds and sizes ---------------------------------------------------------------------------------------

def test_negative_seeds_are_usage_errors(tmp_path: Path) -> None:
    values = {"out": [str(tmp_path / "out")], "data": ["synth"], "directory": [str(tmp_path)], "model": [str(tmp_path)],
              "path": [str(tmp_path)], "input": ["synth://?n=1"], "results": [str(tmp_path)]}
    checked = []
    for words, cmd in commands():
        for p in cmd.params:
            if p.name.endswith("seed") and words != ["run"]:  # run's options belong to the runtime's own tests
                r = runner.invoke(app, [*words, *_required_args(words, cmd, values), p.opts[0], "-1"])
                said = " ".join(r.output.replace("│", " ").split())
                assert r.exit_code == 2 and f"Invalid value for '{p.opts[0]}'" in said, (words, p.name, r.output)
                checked.append(" ".join(words))
    assert {"data render", "eval clean", "eval robust", "train classifier", "demo", "calibrate"} <= set(checked)


def test_rendered_data_sets_check_seed_and_size(tmp_path: Path) -> None:
    from edgepure.runtime.synth import render_dataset

    for kw, match in [({"seed": -1}, "seed must be ≥ 0"), ({"size": -1}, "size must be 8 to 1024"),
                      ({"size": 5000}, "size must be 8 to 1024")]:
        with pytest.raises(ConfigError, match=match):
            render_dataset(2, **kw)
    for size in ("-1", "5000"):
        r = runner.invoke(app, ["data", "render", str(tmp_path / "r"), "--n", "2", "--size", size])
        assert r.exit_code == 2 and "Invalid value for '--size'" in " ".join(r.output.replace("│", " ").split())
    assert not (tmp_path / "r").exists()


def test_synth_size_has_an_upper_bound() -> None:
    from edgepure.runtime.stream.sources import SynthSource

    assert SynthSource("synth://?size=1024").size == 1024
    for size in (1025, 100000):
        with pytest.raises(ConfigError, match=rf"size must be ≤ 1024 pixels, got {size}"):
            SynthSource(f"synth://?size={size}")


# --- --force replaces only what edgepure wrote ---------------------------------------------------------------

def _user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    (path / "manifest.json").write_text('{"name": "my web app", "icons": []}')  # not an edgepure manifest
    return path


def test_export_force_refuses_a_folder_of_user_files(tmp_path: Path) -> None:
    out = _user_folder(tmp_path / "mine")
    with pytest.raises(ConfigError, match=r"mine: .*not written by edgepure.*thesis\.tex"):
        export_tiny(out, overwrite=True)
    assert (out / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging directory left either


def test_export_force_refuses_a_file(tmp_path: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("keep")
    with pytest.raises(ConfigError, match="not a directory"):
        export_tiny(out, overwrite=True)
    assert out.read_text() == "keep"


def test_export_force_replaces_a_model_directory_and_an_empty_one(tmp_path: Path) -> None:
    out = tmp_path / "model"
    first = export_tiny(out)
    (out / "engines").mkdir()  # what 'edgepure build' adds
    second = export_tiny(out, overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["created"] == second["created"]
    assert not (out / "engines").exists() and first["models"].keys() == second["models"].keys()
    empty = tmp_path / "empty"
    empty.mkdir()
    export_tiny(empty, overwrite=True)
    assert (empty / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "model"]


def test_cli_export_force_refuses_user_files_before_any_work(tmp_path: Path, no_classifier: None) -> None:
    out = _user_folder(tmp_path / "mine")
    for steps in ([], ["--steps", "2", "--steps", "4"]):  # a single model and a variant set
        r = runner.invoke(app, ["export", "--out", str(out), "--force", "--purifier", "nappure", *steps])
        assert r.exit_code == 1 and "not written by edgepure" in r.stderr, r.output
        assert (out / "thesis.tex").read_text() == "years of work"


def test_a_variant_set_is_replaced(tmp_path: Path) -> None:
    from edgepure.cli.export import _export_variants
    from edgepure.runtime.variants import list_variants

    out = tmp_path / "set"

    def one(target: Path, extra: dict[str, Any], overwrite: bool) -> dict[str, Any]:
        return export_tiny(target, overwrite)

    _export_variants(out, [1, 2], one, False)
    with pytest.raises(ConfigError, match="exists; pass --force"):
        _export_variants(out, [1, 2], one, False)
    _export_variants(out, [3], one, True)
    assert [v.name for v in list_variants(out)] == ["k3"]
    assert not list(out.rglob(".edgepure-staging*"))  # no staging marker ships, at either level
    mine = _user_folder(tmp_path / "mine")
    with pytest.raises(ConfigError, match="not written by edgepure"):
        _export_variants(mine, [1], one, True)
    assert (mine / "thesis.tex").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "set"]


def test_calibrate_force_refuses_user_files(tmp_path: Path, tiny_model: Path) -> None:
    from edgepure.calibration.directory import calibrate_directory

    out = _user_folder(tmp_path / "mine")
    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    with pytest.raises(ConfigError, match="not written by edgepure"):
        calibrate_directory(tiny_model, out, images, overwrite=True)
    assert (out / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


# --- staging directories of killed exports -----------------------------------------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_killed_exports_staging_directory_is_cleaned_by_the_next(tmp_path: Path) -> None:
    from edgepure.runtime.staging import MARKER, staging_dir

    out = tmp_path / "model"
    live = staging_dir(out)  # this process is alive: a concurrent export's directory
    stale = staging_dir(out)
    (stale / "classifier.onnx").write_bytes(b"half written")
    marker = json.loads((stale / MARKER).read_text())
    assert marker["pid"] == os.getpid()
    (stale / MARKER).write_text(json.dumps({**marker, "pid": _dead_pid()}))
    old = tmp_path / f".{out.name}.oldstyle"  # no marker (an export of an earlier edgepure), long ago
    old.mkdir()
    os.utime(old, (time.time() - 7 * 86400,) * 2)
    recent = tmp_path / f".{out.name}.justmade"  # no marker yet: may be an export that is starting
    recent.mkdir()
    other = tmp_path / ".model.v2.abcdefgh"  # the staging directory of another output, model.v2
    other.mkdir()
    os.utime(other, (time.time() - 7 * 86400,) * 2)
    export_tiny(out)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert live.name in left and recent.name in left and other.name in left
    assert stale.name not in left and old.name not in left
    assert not (out / MARKER).exists()  # the marker stays behind in the staging directory
    assert (out / "manifest.json").is_file()
