"""``edgepure build``: the engine cache key, the engine builder and the runtime's engine lookup.

Most tests run on the CPU with fake ``tensorrt`` modules (a 10.x one with ``BuilderFlag.FP16`` and an 11.x one
without it) and a fake ``cuda.bindings.runtime`` (one "Orin", sm 8.7) injected into ``sys.modules``. They check
which TensorRT calls and flags the builder uses, in which order, and what lands in the model directory; they are
no evidence that TensorRT accepts those calls. Only the ``gpu``-marked test builds and runs a real engine.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import stat
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import blocked_imports
import typer
from typer.testing import CliRunner

from edgepure.calibration.build import build_engine
from edgepure.cli.build import build_cmd, parse_size
from edgepure.runtime.backends import open_backend
from edgepure.runtime.backends.cuda import NoGPUError, has_gpu
from edgepure.runtime.engines import (
    EngineKey,
    current_device,
    engine_mismatch,
    find_engine,
    missing_engine_message,
    stale_engines,
)
from edgepure.runtime.errors import ConfigError, EdgepureError, MissingDependencyError, ModelError
from edgepure.runtime.manifest import load_manifest, sha256_file

HAS_GPU = has_gpu()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


from fake_trt import (  # noqa: E402 - the fakes live beside the tests
    Err,
    FakeCudart,
    install_cudart,
    fake_tensorrt,
    TripwireTensorRT,
    TRT11,
)


# --- fixtures -----------------------------------------------------------------------------------------------

def write_manifest(d: Path, manifest: dict[str, Any]) -> None:
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def make_model_dir(root: Path, precision: str = "fp32", batch: int = 1, roles: tuple[str, ...] = ("pipeline",)) -> Path:
    """A model directory whose "ONNX" files are placeholder bytes (enough for the fakes) and a valid manifest."""
    d = root / "model"
    d.mkdir(parents=True)
    models = {}
    for role in roles:
        f = d / f"{role}.onnx"
        f.write_bytes(b"placeholder graph for " + role.encode())
        models[role] = {"file": f.name, "sha256": sha256_file(f),
                        "inputs": [{"name": "image", "shape": [batch, 3, 32, 32], "dtype": "float32"}],
                        "outputs": [{"name": "logits", "shape": [batch, 43], "dtype": "float32"}]}
    write_manifest(d, {"schema": 1, "models": models, "class_names": [f"c{i}" for i in range(43)],
                       "preprocessing": {"input": "float32 RGB NCHW in [0, 1]", "size": [32, 32]},
                       "precision": precision, "batch": batch})
    return d


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path)


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch, log: list[str]) -> FakeCudart:
    """One fake "Orin" (sm 8.7) behind a fake cuda-python."""
    cudart = FakeCudart(log)
    install_cudart(monkeypatch, cudart)
    return cudart


def use_trt(monkeypatch: pytest.MonkeyPatch, log: list[str], **kw: Any) -> types.ModuleType:
    trt = fake_tensorrt(log, **kw)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


@pytest.fixture
def trt10(monkeypatch: pytest.MonkeyPatch, gpu: FakeCudart, log: list[str]) -> types.ModuleType:
    return use_trt(monkeypatch, log)


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# --- the cache key ------------------------------------------------------------------------------------------

KEY = EngineKey("ab" * 32, "10.3.0", "Orin", "8.7", "fp16", 1)


def test_engine_key_filename_in_the_jetson_inference_spirit() -> None:
    assert re.fullmatch(r"engines/pipeline\.b1\.fp16\.trt10\.3\.0\.orin-sm87\.[0-9a-f]{10}\.engine", KEY.filename("pipeline"))
    assert KEY.filename("pipeline").split(".")[-2] == KEY.digest()[:10]
    other = dataclasses.replace(KEY, gpu="NVIDIA GeForce RTX 4090", compute_capability="8.9", tensorrt="11.4.0.106",
                                dla_core=1, version_compatible=True)
    name = other.filename("classifier")
    assert name.startswith("engines/classifier.b1.fp16.dla1.vc.trt11.4.0.106.nvidia-geforce-rtx-4090-sm89.")
    assert "/" not in name[len("engines/"):] and " " not in name
    assert EngineKey(**KEY.as_dict()).digest() == KEY.digest()  # stable: a function of the fields only
    with pytest.raises(ConfigError, match="precision"):
        dataclasses.replace(KEY, precision="bf16")


@pytest.mark.parametrize("field,value", [("onnx_sha256", "cd" * 32), ("tensorrt", "10.3.1"), ("gpu", "Thor"),
                                         ("compute_capability", "8.9"), ("precision", "int8"), ("batch", 2),
                                         ("dla_core", 0), ("version_compatible", True)])
def test_every_key_field_changes_the_digest_and_the_filename(field: str, value: Any) -> None:
    changed = dataclasses.replace(KEY, **{field: value})
    assert changed.digest() != KEY.digest()
    assert changed.filename("pipeline") != KEY.filename("pipeline")


def test_current_device_reads_name_and_compute_capability_with_fakes(gpu: FakeCudart, log: list[str]) -> None:
    assert current_device() == ("Orin", "8.7")
    assert log == ["cudaGetDeviceCount", "cudaGetDeviceProperties:0"]  # the probe comes first


# --- building: call order and flags -------------------------------------------------------------------------

BUILD_ORDER = ["cudaGetDeviceProperties:0", "init_libnvinfer_plugins", "Builder", "create_network:2", "OnnxParser", "parse_from_file:pipeline.onnx",
               "create_builder_config", f"set_memory_pool_limit:WORKSPACE:{1 << 30}", "create_timing_cache:b''",
               "set_timing_cache:b'':ignore_mismatch=False", "build_serialized_network"]


def test_fp32_build_call_order_and_entry_with_fakes(model_dir: Path, trt10: Any, log: list[str],
                                                   umask: int) -> None:
    entry = build_engine(model_dir)
    assert log[0] == "cudaGetDeviceCount"  # the GPU probe before anything else
    assert [e for e in log if e in BUILD_ORDER] == BUILD_ORDER
    assert not [e for e in log if e.startswith(("set_flag", "config."))]
    assert entry["cached"] is False
    engine = model_dir / entry["file"]
    assert entry["file"].startswith("engines/pipeline.b1.fp32.trt10.3.0.orin-sm87.") and engine.is_file()
    assert entry["sha256"] == sha256_file(engine) and entry["size"] == engine.stat().st_size
    manifest = load_manifest(model_dir)  # still valid; the ONNX checks pass
    (recorded,) = manifest["engines"]["pipeline"]
    assert recorded == {k: v for k, v in entry.items() if k != "cached"}
    assert recorded["onnx_sha256"] == manifest["models"]["pipeline"]["sha256"]
    assert (recorded["tensorrt"], recorded["gpu"], recorded["compute_capability"]) == ("10.3.0", "Orin", "8.7")
    assert (recorded["precision"], recorded["batch"], recorded["dla_core"], recorded["version_compatible"]) == (
        "fp32", 1, None, False)
    assert recorded["workspace"] == 1 << 30 and recorded["build_seconds"] >= 0
    assert recorded["created"].endswith("+00:00")
    assert not list(model_dir.rglob("*.tmp"))
    for written in (engine, model_dir / "manifest.json"):  # readable like any file, not mkstemp's 0600
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask, written


@pytest.mark.parametrize("strongly_typed,flags", [(True, 2), (False, 0)])
def test_11x_builds_strongly_typed_without_precision_flags_with_fakes(
        monkeypatch: pytest.MonkeyPatch, model_dir: Path, gpu: FakeCudart, log: list[str],
        strongly_typed: bool, flags: int) -> None:
    use_trt(monkeypatch, log, strongly_typed=strongly_typed, **TRT11)
    entry = build_engine(model_dir)
    assert f"create_network:{flags}" in log and not [e for e in log if e.startswith("set_flag")]
    assert entry["tensorrt"] == "11.4.0" and ".trt11.4.0." in entry["file"]


def test_fp16_graph_builds_as_it_is_with_fakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeCudart,
                                               log: list[str]) -> None:
    d = make_model_dir(tmp_path, precision="fp16")
    use_trt(monkeypatch, log, **TRT11)
    entry = build_engine(d)
    assert "create_network:2" in log and not [e for e in log if e.startswith("set_flag")]
    assert entry["precision"] == "fp16" and ".fp16." in entry["file"]


def test_fp16_on_an_fp32_graph_uses_the_weak_typing_fallback_on_10x_with_fakes(
        model_dir: Path, trt10: Any, log: list[str]) -> None:
    entry = build_engine(model_dir, precision="fp16")
    assert "create_network:0" in log and "set_flag:FP16" in log
    assert log.index("set_flag:FP16") < log.index("build_serialized_network")
    assert entry["precision"] == "fp16" and ".fp16." in entry["file"]


def test_fp16_on_an_fp32_graph_is_refused_on_11x(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                                  gpu: FakeCudart, log: list[str]) -> None:
    use_trt(monkeypatch, log, **TRT11)
    before = snapshot(model_dir)
    with pytest.raises(ConfigError, match="--precision fp16") as info:
        build_engine(model_dir, precision="fp16")
    assert "strongly typed" in str(info.value)
    assert "Builder" not in log and snapshot(model_dir) == before


def test_precision_requests_the_graph_cannot_meet_are_refused(tmp_path: Path) -> None:
    """Checked before the GPU probe, so they hold on any machine."""
    fp32, fp16, int8 = (make_model_dir(tmp_path / p, precision=p) for p in ("fp32", "fp16", "int8"))
    with pytest.raises(ConfigError, match="edgepure calibrate"):
        build_engine(fp32, precision="int8")
    with pytest.raises(ConfigError, match="int8"):
        build_engine(int8, precision="fp16")
    with pytest.raises(ConfigError, match="--precision fp32"):
        build_engine(fp16, precision="fp32")
    with pytest.raises(ConfigError, match="fp16 and int8 only"):
        build_engine(fp32, dla_core=0)
    with pytest.raises(ConfigError, match="0 or more"):
        build_engine(fp16, dla_core=-1)
    with pytest.raises(ConfigError, match="bf16"):
        build_engine(fp32, precision="bf16")
    with pytest.raises(ConfigError, match=r"no pipeline model \(has classifier\)"):
        build_engine(make_model_dir(tmp_path / "clf", roles=("classifier",)))


def test_int8_graph_builds_strongly_typed_without_int8_flag_with_fakes(tmp_path: Path, trt10: Any,
                                                                       log: list[str]) -> None:
    d = make_model_dir(tmp_path, precision="int8")
    entry = build_engine(d)
    assert "create_network:2" in log and not [e for e in log if e.startswith("set_flag")]
    assert entry["precision"] == "int8"


def test_dla_flags_with_fakes(tmp_path: Path, trt10: Any, log: list[str]) -> None:
    d = make_model_dir(tmp_path, precision="fp16")
    entry = build_engine(d, dla_core=1)
    dla = ["config.default_device_type=DLA", "config.DLA_core=1", "set_flag:GPU_FALLBACK", "build_serialized_network"]
    assert [e for e in log if e in dla] == dla
    assert entry["dla_core"] == 1 and ".dla1." in entry["file"]
    before = snapshot(d)
    with pytest.raises(ConfigError, match="2 DLA core"):
        build_engine(d, dla_core=2)
    assert snapshot(d) == before


def test_version_compatible_flag_with_fakes(model_dir: Path, trt10: Any, log: list[str]) -> None:
    entry = build_engine(model_dir, version_compatible=True)
    assert "set_flag:VERSION_COMPATIBLE" in log
    assert entry["version_compatible"] is True and ".vc." in entry["file"]


def test_timing_cache_is_written_and_reused_with_fakes(model_dir: Path, trt10: Any, log: list[str],
                                                       tmp_path: Path) -> None:
    cache = model_dir / "engines" / "timing.cache"
    build_engine(model_dir)
    assert cache.read_bytes() == b"t"
    log.clear()
    build_engine(model_dir, force=True)
    assert "create_timing_cache:b't'" in log and "set_timing_cache:b't':ignore_mismatch=False" in log
    assert cache.read_bytes() == b"tt"
    own = tmp_path / "caches" / "mine.cache"
    build_engine(model_dir, force=True, timing_cache=own)
    assert own.read_bytes() == b"t" and cache.read_bytes() == b"tt"
    own.write_bytes(b"other device")  # refused by set_timing_cache: an empty cache is used and then saved
    log.clear()
    build_engine(model_dir, force=True, timing_cache=own)
    assert "set_timing_cache:b'':ignore_mismatch=False" in log and own.read_bytes() == b"t"


# --- nothing half-written -----------------------------------------------------------------------------------

def test_a_failed_build_leaves_the_directory_untouched_with_fakes(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                                                  gpu: FakeCudart, log: list[str]) -> None:
    before = snapshot(model_dir)
    use_trt(monkeypatch, log, plan=None)
    with pytest.raises(ModelError, match="could not build the pipeline engine"):
        build_engine(model_dir)
    assert snapshot(model_dir) == before and not (model_dir / "engines").exists()
    use_trt(monkeypatch, log, parse_errors=("In node 3 (GridSample): unsupported mode", "second error"))
    with pytest.raises(ModelError, match="GridSample") as info:
        build_engine(model_dir)
    assert "second error" in str(info.value)
    assert snapshot(model_dir) == before and not (model_dir / "engines").exists()


def test_an_interrupted_commit_leaves_no_half_written_files_with_fakes(monkeypatch: pytest.MonkeyPatch,
                                                                       model_dir: Path, trt10: Any) -> None:
    import edgepure.calibration.build as build_mod

    before = snapshot(model_dir)

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build_mod.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        build_engine(model_dir)
    assert snapshot(model_dir) == before  # no engine, no temporary files, the old manifest


# --- the cache ----------------------------------------------------------------------------------------------

def test_second_build_is_a_cache_hit_and_force_rebuilds_with_fakes(model_dir: Path, trt10: Any,
                                                                   log: list[str]) -> None:
    first = build_engine(model_dir)
    log.clear()
    again = build_engine(model_dir)
    assert again["cached"] is True and "Builder" not in log
    assert {k: v for k, v in again.items() if k != "cached"} == {k: v for k, v in first.items() if k != "cached"}
    forced = build_engine(model_dir, force=True)
    assert forced["cached"] is False and "Builder" in log and forced["file"] == first["file"]
    assert len(load_manifest(model_dir)["engines"]["pipeline"]) == 1  # replaced, not duplicated


def test_the_key_changes_exactly_when_it_should_with_fakes(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                                           gpu: FakeCudart, log: list[str], tmp_path: Path) -> None:
    use_trt(monkeypatch, log)

    def builds(**kw: Any) -> bool:
        log.clear()
        entry = build_engine(model_dir, **kw)
        assert entry["cached"] == ("Builder" not in log)
        return not entry["cached"]

    def edit_manifest(**changes: Any) -> None:
        manifest = json.loads((model_dir / "manifest.json").read_text())
        manifest.update(changes)
        write_manifest(model_dir, manifest)

    assert builds()
    # not part of the key: the workspace and the timing cache
    assert not builds() and not builds(workspace_bytes=1 << 28) and not builds(timing_cache=tmp_path / "t.cache")
    assert builds(precision="fp16") and not builds(precision="fp16")
    assert builds(precision="fp16", dla_core=0) and not builds(precision="fp16", dla_core=0)
    assert builds(version_compatible=True) and not builds(version_compatible=True)
    use_trt(monkeypatch, log, version="10.3.1")  # another TensorRT
    assert builds() and not builds()
    gpu.name = b"NVIDIA GeForce RTX 4090"  # another GPU
    assert builds() and not builds()
    gpu.cc = (8, 9)  # same name, another compute capability
    assert builds() and not builds()
    onnx = model_dir / "pipeline.onnx"  # another graph (e.g. re-calibrated)
    onnx.write_bytes(b"another graph")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["models"]["pipeline"]["sha256"] = sha256_file(onnx)
    write_manifest(model_dir, manifest)
    assert builds() and not builds()
    edit_manifest(batch=2)
    assert builds() and not builds()
    entries = load_manifest(model_dir)["engines"]["pipeline"]
    assert len(entries) == 9 and len({e["file"] for e in entries}) == 9
    assert all((model_dir / e["file"]).is_file() for e in entries)


def test_find_engine_refuses_a_tampered_engine_with_fakes(model_dir: Path, trt10: Any, log: list[str]) -> None:
    entry = build_engine(model_dir)
    manifest = load_manifest(model_dir)
    key = EngineKey.from_entry(entry)
    assert key is not None
    assert find_engine(model_dir, manifest, "pipeline", key) == model_dir / entry["file"]
    with (model_dir / entry["file"]).open("ab") as f:
        f.write(b"\x00")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        find_engine(model_dir, manifest, "pipeline", key)
    with pytest.raises(ModelError, match="--force"):
        build_engine(model_dir)  # a cache hit on a modified engine is an error, not a silent reuse
    assert build_engine(model_dir, force=True)["cached"] is False
    (model_dir / entry["file"]).unlink()
    with pytest.raises(ModelError, match="missing"):
        find_engine(model_dir, load_manifest(model_dir), "pipeline", key)
    escaping = {"engines": {"pipeline": [{**entry, "file": "../elsewhere.engine"}]}}
    with pytest.raises(ModelError, match="not inside the model directory"):
        find_engine(model_dir, escaping, "pipeline", key)


# --- the runtime's lookup -----------------------------------------------------------------------------------

class RecordingBackend:
    """Stands in for TensorRTBackend: records the engine path it was given."""

    def __init__(self, path: Path, dla_core: object = None, version_compatible: bool = False) -> None:
        self.path = path
        self.dla_core, self.version_compatible = dla_core, version_compatible


def test_open_backend_explains_an_engine_from_another_trt_and_gpu_with_fakes(
        monkeypatch: pytest.MonkeyPatch, model_dir: Path, trt10: Any, gpu: FakeCudart, log: list[str]) -> None:
    build_engine(model_dir)  # TensorRT 10.3.0 on Orin
    use_trt(monkeypatch, log, **TRT11)
    gpu.name, gpu.cc = b"NVIDIA GeForce RTX 4090", (8, 9)
    manifest = load_manifest(model_dir)
    with pytest.raises(ModelError) as info:
        open_backend("tensorrt", model_dir, "pipeline", manifest)
    msg = str(info.value)
    assert "built for TensorRT 10.3.0 on Orin (sm 8.7)" in msg
    assert "TensorRT 11.4.0 on NVIDIA GeForce RTX 4090 (sm 8.9)" in msg
    assert f"edgepure build {model_dir} --role pipeline" in msg
    here = EngineKey(manifest["models"]["pipeline"]["sha256"], "11.4.0", "NVIDIA GeForce RTX 4090", "8.9", "fp32", 1)
    assert stale_engines(manifest, "pipeline", here) == manifest["engines"]["pipeline"]
    assert "10.3.0" in engine_mismatch(manifest["engines"]["pipeline"][0], here)


def test_open_backend_without_engines_names_the_build_command_with_fakes(model_dir: Path, trt10: Any) -> None:
    with pytest.raises(ModelError, match=f"edgepure build {re.escape(str(model_dir))} --role pipeline") as info:
        open_backend("tensorrt", model_dir, "pipeline", load_manifest(model_dir))
    assert "lists none" in str(info.value) and "ort-trt" in str(info.value)
    key = EngineKey("0" * 64, "10.3.0", "Orin", "8.7", "fp32", 1)
    assert "edgepure build" in missing_engine_message(model_dir, {}, "pipeline", key)


def test_open_backend_picks_the_engine_built_here_with_fakes(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                                             trt10: Any) -> None:
    import edgepure.runtime.backends.tensorrt as trt_backend

    monkeypatch.setattr(trt_backend, "TensorRTBackend", RecordingBackend)
    fp16 = build_engine(model_dir, precision="fp16")  # the TensorRT 10 fallback: not the manifest's precision
    be = open_backend("tensorrt", model_dir, "pipeline", load_manifest(model_dir))
    assert be.path == model_dir / fp16["file"]  # any engine that loads here will do
    fp32 = build_engine(model_dir)
    be = open_backend("tensorrt", model_dir, "pipeline", load_manifest(model_dir))
    assert be.path == model_dir / fp32["file"]  # ... but the manifest's precision comes first


def test_open_backend_probes_the_gpu_before_tensorrt(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                                     log: list[str]) -> None:
    install_cudart(monkeypatch, FakeCudart(log, err=Err.cudaErrorNoDevice))
    monkeypatch.setitem(sys.modules, "tensorrt", TripwireTensorRT())
    with pytest.raises(NoGPUError, match="cudaErrorNoDevice"):
        open_backend("tensorrt", model_dir, "pipeline", load_manifest(model_dir))


# --- missing GPU / TensorRT ---------------------------------------------------------------------------------

def test_no_gpu_is_refused_before_tensorrt_is_touched(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                                      log: list[str]) -> None:
    install_cudart(monkeypatch, FakeCudart(log, err=Err.cudaErrorNoDevice))
    monkeypatch.setitem(sys.modules, "tensorrt", TripwireTensorRT())
    with pytest.raises(NoGPUError, match="NVIDIA GPU"):
        build_engine(model_dir)
    assert not (model_dir / "engines").exists()


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU path of this machine")
def test_this_machine_without_gpu_gets_a_clear_error(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", TripwireTensorRT())
    with pytest.raises(EdgepureError, match="cuda-python|NVIDIA GPU"):
        build_engine(model_dir)


def test_missing_tensorrt_is_named(monkeypatch: pytest.MonkeyPatch, model_dir: Path, gpu: FakeCudart,
                                   log: list[str]) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean", None)
    with pytest.raises(MissingDependencyError, match="'tensorrt'") as info:
        build_engine(model_dir)
    assert info.value.package == "tensorrt"
    lean = fake_tensorrt(log, builder=False, **TRT11)
    lean.__name__ = "tensorrt_lean"
    monkeypatch.setitem(sys.modules, "tensorrt_lean", lean)
    with pytest.raises(MissingDependencyError, match="lean runtime") as info:
        build_engine(model_dir)
    assert info.value.package == "tensorrt"


# --- the CLI ------------------------------------------------------------------------------------------------

def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    app.command("build")(build_cmd)
    return app


runner = CliRunner()


@pytest.mark.parametrize("text,size", [("512M", 512 << 20), ("1G", 1 << 30), ("2G", 2 << 30), ("2GiB", 2 << 30),
                                       ("64k", 64 << 10), ("1.5G", 3 << 29), ("1073741824", 1 << 30)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "1X", "-1G", "0", "G"])
def test_parse_size_refuses_bad_sizes(text: str) -> None:
    with pytest.raises(ConfigError, match="--workspace"):
        parse_size(text)


def test_cli_bad_workspace_exits_1(model_dir: Path) -> None:
    r = runner.invoke(cli(), ["build", str(model_dir), "--workspace", "lots"])
    assert r.exit_code == 1 and "error:" in r.stderr and "--workspace" in r.stderr
    assert "Traceback" not in r.output


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU path of this machine")
def test_cli_without_gpu_exits_1_without_traceback(model_dir: Path) -> None:
    r = runner.invoke(cli(), ["build", str(model_dir)])
    assert r.exit_code == 1 and "error:" in r.stderr and re.search("cuda-python|NVIDIA GPU", r.stderr)
    assert "Traceback" not in r.output


def test_cli_builds_then_reports_the_cache_with_fakes(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                                      trt10: Any, log: list[str]) -> None:
    app = cli()
    r = runner.invoke(app, ["build", str(model_dir), "--workspace", "512M"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"built: {model_dir}/engines/pipeline.b1.fp32.trt10.3.0.orin-sm87.")
    assert f"set_memory_pool_limit:WORKSPACE:{512 << 20}" in log
    r = runner.invoke(app, ["build", str(model_dir)])
    assert r.exit_code == 0 and r.stdout.startswith("cached: ")
    r = runner.invoke(app, ["build", str(model_dir), "--json", "--precision", "fp16", "--dla-core", "0",
                            "--version-compatible"])
    entry = json.loads(r.stdout)
    assert (entry["precision"], entry["dla_core"], entry["version_compatible"], entry["cached"]) == ("fp16", 0, True, False)
    use_trt(monkeypatch, log, **TRT11)
    r = runner.invoke(app, ["build", str(model_dir), "--precision", "fp16"])
    assert r.exit_code == 1 and "--precision fp16" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, ["build", str(model_dir), "--role", "decoder"])
    assert r.exit_code == 2  # not a role: typer's own usage error


# --- no torch, onnx or tensorrt at import time ----------------------------------------------------------------

BLOCKED_IMPORT = blocked_imports("torch", "onnx", "tensorrt", "tensorrt_lean", "cuda") + textwrap.dedent(
    """
    import edgepure.runtime.engines
    assert not [m for m in sys.modules if m.startswith("edgepure.calibration")]
    import edgepure.calibration.build
    loaded = [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "tensorrt", "cuda")]
    assert not loaded, loaded
    print("ok")
    """
)


def test_engine_modules_import_without_torch_onnx_or_tensorrt() -> None:
    out = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --- real TensorRT ------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_GPU and HAS_TRT), reason="needs an NVIDIA GPU, cuda-python and tensorrt")
def test_real_engine_builds_caches_and_matches_onnxruntime(tmp_path: Path) -> None:
    # torch-free, so that a Jetson without PyTorch runs it: a small conv classifier written with onnx.helper
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.2, (43, 8)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Gemm", ["f", "w2"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 43])], inits)
    out = make_model_dir(tmp_path, roles=("classifier",))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10),
              str(out / "classifier.onnx"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["models"]["classifier"]["sha256"] = sha256_file(out / "classifier.onnx")
    write_manifest(out, manifest)
    images = rng.random((2, 3, 32, 32), dtype=np.float32)
    role = "classifier"
    entry = build_engine(out, role=role, workspace_bytes=1 << 28)
    assert entry["cached"] is False and (out / "engines" / "timing.cache").is_file()
    assert build_engine(out, role=role)["cached"] is True
    manifest = load_manifest(out)
    ort_cpu = open_backend("ort-cpu", out, role, manifest)
    trt = open_backend("tensorrt", out, role, manifest)
    try:
        assert Path(trt.path) == out / entry["file"]  # type: ignore[attr-defined]
        name = ort_cpu.inputs[0].name
        for x in images:
            feed = {name: x[None]}
            expected, got = ort_cpu.run(feed), trt.run(feed)
            for g, e in zip(got, expected):
                np.testing.assert_allclose(g, e, atol=1e-2, rtol=1e-2)
    finally:
        trt.close()
        ort_cpu.close()
