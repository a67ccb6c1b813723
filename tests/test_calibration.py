"""INT8 calibration: Q/DQ model directories that ONNX Runtime runs and TensorRT's rules accept."""

from __future__ import annotations

import json
import shutil
import stat
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgepure.calibration.data import FeedReader, preprocess, synth_images
from edgepure.calibration.directory import calibrate_directory
from edgepure.calibration.quantize import check_qdq, quantize_model
from edgepure.calibration.trtcache import cache_header
from edgepure.cli.main import app
from edgepure.export.lint import lint_model
from edgepure.runtime.errors import ConfigError, ModelError, PrecisionWarning
from edgepure.runtime.model import load_model

cli = CliRunner()


def _cpu_has_vnni() -> bool:
    """ONNX Runtime's x86 INT8 kernels without VNNI (AVX2 only) multiply u8×s8 pairs with 16-bit saturation
    (vpmaddubsw), so INT8 accuracy measured on such a CPU says more about the CPU than about the calibration.
    Read here independently of ``edgepure.runtime.machine.int8_saturates``, which the tests check against it."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: no way to tell, assume a VNNI-class CPU
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8")) or "avx2" not in flags


@pytest.fixture(scope="module")
def calib() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    imgs, _ = synth_images(64, seed=1)
    ev, labels = synth_images(200, seed=2)
    return preprocess(imgs, (32, 32)), preprocess(ev, (32, 32)), labels


@pytest.fixture(scope="module")
def int8_dir(model_dirs: dict[str, Path], calib: tuple, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("q") / "median-int8"
    x, ev, labels = calib
    calibrate_directory(model_dirs["median"], out, x, ev, labels, data="synth", trt_cache=True, scope="classifier")
    return out


def test_int8_directory_runs_and_keeps_accuracy(int8_dir: Path, model_dirs: dict[str, Path], calib: tuple,
                                               umask: int) -> None:
    m = json.loads((int8_dir / "manifest.json").read_text())
    assert m["precision"] == "int8" and m["models"]["pipeline"]["precision"] == "int8"
    assert m["models"]["purifier"]["precision"] == "fp32"  # scope classifier: the purifier stays FP32
    cal = m["calibration"]
    assert cal["n"] == 64 and cal["method"] == "entropy" and cal["data"] == "synth" and cal["scope"] == "classifier"
    rep = cal["report"]
    assert rep["n"] == 200 and rep["arithmetic"] == "qdq-exact"
    assert stat.S_IMODE(int8_dir.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    # the stated bound, in exact Q/DQ arithmetic (what TensorRT computes; the same on every CPU):
    # INT8 loses at most 2 points of accuracy and agrees with FP32 on ≥ 95 % of top-1s
    assert rep["top1_agreement"] >= 0.95
    assert rep["accuracy_int8"] >= rep["accuracy_fp32"] - 0.02 and rep["accuracy_fp32"] >= 0.85
    cpu = rep["onnxruntime_cpu"]  # the same images on this CPU's fused INT8 kernels
    assert set(cpu) == {"top1_agreement", "max_abs_logit_diff", "accuracy_int8", "cpu", "int8_saturates"}
    assert cpu["int8_saturates"] == (not _cpu_has_vnni())
    _, ev, labels = calib
    a = load_model(model_dirs["median"]).logits(ev[:50]).argmax(1)
    if cpu["int8_saturates"]:
        with pytest.warns(PrecisionWarning, match="no VNNI"):
            load_model(int8_dir)
        pytest.skip("INT8 agreement on ONNX Runtime's CPU kernels needs VNNI (this CPU has AVX2 only: u8s8 saturation)")
    assert cpu["top1_agreement"] >= 0.95
    b = load_model(int8_dir).logits(ev[:50]).argmax(1)  # the runtime loads it like any model directory
    assert np.mean(a == b) >= 0.95
    for role in ("classifier", "pipeline"):
        model = onnx.load(str(int8_dir / m["models"][role]["file"]))
        assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) >= 10
        assert check_qdq(model) == []
        assert [i for i in lint_model(model, "10.3") if i.severity == "error"] == []


def test_trt_calibration_cache_format(int8_dir: Path) -> None:
    lines = (int8_dir / "pipeline.calibration.cache").read_text().splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2" and len(lines) > 10
    names = {v.name for v in onnx.load(str(int8_dir / "pipeline.fp32.onnx")).graph.node for v in [v]}
    for line in lines[1:]:
        name, _, hexbits = line.partition(": ")
        scale = struct.unpack(">f", bytes.fromhex(hexbits))[0]
        assert name and len(hexbits) == 8 and 0 < scale < 1e3
    assert names  # the FP32 graph the cache belongs to ships beside it
    assert cache_header("8.6.1") == "TRT-8601-EntropyCalibration2"


def _convtranspose_model(path: Path) -> None:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["image", "w1"], ["h"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("ConvTranspose", ["r", "w2"], ["out"], pads=[1, 1, 1, 1], name="convT")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 8, 8])], [w1, w2])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))


def test_convtranspose_weights_are_quantized_on_axis_0(tmp_path: Path) -> None:
    src, dst = tmp_path / "m.onnx", tmp_path / "q.onnx"
    _convtranspose_model(src)
    x = np.random.default_rng(1).random((8, 3, 8, 8), dtype=np.float32)
    info = quantize_model(src, dst, FeedReader(x, [{"name": "image", "shape": [1, 3, 8, 8]}]), "minmax")
    q = onnx.load(str(dst))
    assert info["quantize_nodes"] >= 2 and check_qdq(q) == []
    dq_w2 = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w2")]
    assert dq_w2 and all(next(a.i for a in n.attribute if a.name == "axis") == 0 for n in dq_w2)


def test_check_qdq_catches_what_tensorrt_refuses(tmp_path: Path) -> None:
    src, dst = tmp_path / "m.onnx", tmp_path / "q.onnx"
    _convtranspose_model(src)
    x = np.random.default_rng(1).random((4, 3, 8, 8), dtype=np.float32)
    quantize_model(src, dst, FeedReader(x, [{"name": "image", "shape": [1, 3, 8, 8]}]), "minmax")
    q = onnx.load(str(dst))
    zp = next(t for t in q.graph.initializer if t.name.endswith("zero_point") and t.data_type == TensorProto.INT8)
    arr = numpy_helper.to_array(zp).copy()
    arr.flat[0] = 3
    zp.CopyFrom(numpy_helper.from_array(arr, zp.name))
    for n in q.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0].startswith("w2"):
            for a in n.attribute:
                if a.name == "axis":
                    a.i = 1
    problems = check_qdq(q)
    assert any("zero point" in p for p in problems) and any("axis 1" in p for p in problems)


def test_exclusions_and_methods(model_dirs: dict[str, Path], calib: tuple, tmp_path: Path) -> None:
    x, _, _ = calib
    out = tmp_path / "mm"
    m = calibrate_directory(model_dirs["plain"], out, x[:16], method="minmax", exclude=["Gemm", "nosuchnode"])
    q = m["models"]["classifier"]["quantization"]
    assert "Gemm" not in q["op_types"] and q["unmatched_exclude"] == ["nosuchnode"]
    model = onnx.load(str(out / "classifier.onnx"))
    produced = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert gemm and not any(n.input[1] in produced for n in gemm)  # the excluded layer keeps float weights
    conv = [n for n in model.graph.node if n.op_type == "Conv"]
    assert conv and all(n.input[1] in produced for n in conv)
    p = calibrate_directory(model_dirs["plain"], tmp_path / "pc", x[:16], method="percentile")
    assert p["calibration"]["method"] == "percentile"


def test_bad_requests_are_refused(model_dirs: dict[str, Path], int8_dir: Path, calib: tuple, tmp_path: Path) -> None:
    x, _, _ = calib
    with pytest.raises(ConfigError, match="calibrate an fp32 model directory"):
        calibrate_directory(int8_dir, tmp_path / "again", x[:8])
    with pytest.raises(ConfigError, match="exists"):
        calibrate_directory(model_dirs["plain"], int8_dir, x[:8])
    with pytest.raises(ConfigError, match="new directory"):
        calibrate_directory(model_dirs["plain"], model_dirs["plain"], x[:8], overwrite=True)
    with pytest.raises(ConfigError, match="method"):
        calibrate_directory(model_dirs["plain"], tmp_path / "m", x[:8], method="magic")
    with pytest.raises(ConfigError, match="graph takes"):
        calibrate_directory(model_dirs["plain"], tmp_path / "s", preprocess(synth_images(2, size=40)[0], (40, 40)))
    bad = tmp_path / "bad"
    shutil.copytree(model_dirs["plain"], bad)
    (bad / "classifier.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        calibrate_directory(bad, tmp_path / "b", x[:8])
    assert not (tmp_path / "m").exists() and not (tmp_path / "b").exists()  # nothing half-written


def test_cli_calibrate_json_and_errors(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli-int8"
    r = cli.invoke(app, ["calibrate", str(model_dirs["median"]), "--n", "16", "--eval-n", "32", "--out", str(out),
                         "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)  # stdout holds only the manifest (the calibrator's progress goes to stderr)
    assert m["calibration"]["report"]["n"] == 32 and (out / "manifest.json").is_file()
    folder = tmp_path / "imgs"
    folder.mkdir()
    from edgepure.runtime.imageio import encode_ppm

    for i, img in enumerate(synth_images(6, seed=4)[0]):
        (folder / f"{i}.ppm").write_bytes(encode_ppm(img))
    r = cli.invoke(app, ["calibrate", str(model_dirs["plain"]), "--data", str(folder), "--n", "4", "--eval-n", "2",
                         "--out", str(tmp_path / "f")])
    assert r.exit_code == 0, r.output
    assert "from 4 images" in r.output
    r = cli.invoke(app, ["calibrate", str(model_dirs["plain"]), "--data", str(tmp_path / "none"), "--out",
                         str(tmp_path / "g")])
    assert r.exit_code == 1 and "error:" in r.output


def test_calibrate_runs_without_torch(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    from test_stream import run_cli

    r = run_cli("calibrate", str(model_dirs["median"]), "--n", "8", "--eval-n", "8", "--out", str(tmp_path / "q"))
    assert r.returncode == 0, r.stderr
    assert "INT8" in r.stdout and (tmp_path / "q" / "pipeline.onnx").is_file()


def test_default_scope_quantizes_the_purifiers_forward_convolutions(calib: tuple, tmp_path: Path) -> None:
    import edgepure
    from edgepure.export.pipeline import export_pipeline

    x, ev, labels = calib
    clf = edgepure.load_classifier()
    src = tmp_path / "gauss"
    export_pipeline(edgepure.create_purifier("gaussian", sigma=0.8), clf, src, x[:4],
                    class_names=clf.pretrained_cfg["class_names"])
    m = calibrate_directory(src, tmp_path / "gauss-int8", x, ev[:64], labels[:64], purifier_n=16)
    cal, models = m["calibration"], m["models"]
    assert cal["scope"] == "forward" and cal["purifier_n"] == 16
    assert models["purifier"]["precision"] == "int8" and models["purifier"]["quantization"]["op_types"] == ["Conv"]
    assert models["purifier"]["quantization"]["quantize_nodes"] >= 1
    assert cal["report"]["top1_agreement"] >= 0.95  # exact Q/DQ arithmetic: the same on every CPU
    median = calibrate_directory(tmp_path / "gauss", tmp_path / "g2", x[:8], scope="classifier")
    assert median["models"]["purifier"]["precision"] == "fp32" and "quantization" not in median["models"]["purifier"]


def test_quantizer_refusals_are_user_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxruntime import quantization

    src, dst = tmp_path / "m.onnx", tmp_path / "q.onnx"
    _convtranspose_model(src)

    def refuse(*a: object, **k: object) -> None:
        raise ValueError("Quantization parameter shared mode is not supported for weight yet")

    monkeypatch.setattr(quantization, "quantize_static", refuse)
    x = np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)
    with pytest.raises(ModelError, match="cannot quantize this graph .*shared mode.*--scope"):
        quantize_model(src, dst, FeedReader(x, [{"name": "image", "shape": [1, 3, 8, 8]}]))


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse2 avx avx2 fma", True),  # AVX2 only: vpmaddubsw saturates
    ("fpu avx2 avx512f avx512bw", True),  # AVX-512 without VNNI (Skylake-SP) saturates too
    ("fpu avx2 avx512f avx512_vnni", False),
    ("fpu avx2 avx_vnni", False),
    ("fp asimd asimddp", False),  # ARM (a Jetson's Cortex-A78AE): no x86 kernels
    (None, None),  # no /proc/cpuinfo: unknown
])
def test_int8_saturation_probe(monkeypatch: pytest.MonkeyPatch, flags: str | None, expected: bool | None) -> None:
    from edgepure.runtime import machine

    monkeypatch.setattr(machine, "_cpu_flags", lambda: None if flags is None else set(flags.split()))
    assert machine.int8_saturates() is expected


def test_runtime_warns_about_int8_on_a_saturating_cpu(int8_dir: Path, model_dirs: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from edgepure.runtime import model as runtime_model

    monkeypatch.setattr(runtime_model, "int8_saturates", lambda: True)
    with pytest.warns(PrecisionWarning) as record:
        load_model(int8_dir)
    text = str(record[0].message)
    agree = json.loads((int8_dir / "manifest.json").read_text())["calibration"]["report"]["top1_agreement"]
    assert str(int8_dir) in text and "FP32 model directory" in text and f"{agree:.3f}" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        load_model(model_dirs["median"])  # an FP32 directory: nothing to say
        load_model(int8_dir, role="purifier")  # scope classifier: this graph stayed FP32
        monkeypatch.setattr(runtime_model, "int8_saturates", lambda: False)
        load_model(int8_dir)  # a VNNI or ARM CPU


def test_cli_shows_the_int8_warning_as_one_line(int8_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgepure.runtime import model as runtime_model

    monkeypatch.setattr(runtime_model, "int8_saturates", lambda: True)
    r = cli.invoke(app, ["bench", "--model", str(int8_dir), "--iters", "2", "--warmup", "1", "--batch", "1"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if "no VNNI" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"warning: {int8_dir}: INT8 model")  # once, CLI-styled
    r = cli.invoke(app, ["run", "synth://?n=2", "--model", str(int8_dir), "--headless"])
    assert r.exit_code == 0, r.output
    assert sum(ln.startswith("warning: ") and "no VNNI" in ln for ln in r.output.splitlines()) == 1
