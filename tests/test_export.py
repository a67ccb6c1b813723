import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import edgepure
from edgepure.cli.main import app
from edgepure.data import open_dataset
from edgepure.export.decompositions import _conv_backward, _grid_sampler_2d_backward, _replication_pad2d_backward
from edgepure.export.errors import ParityError
from edgepure.export.lint import lint_model
from edgepure.export.pipeline import export_pipeline
from edgepure.runtime.backends import ort_session
from edgepure.runtime.errors import ModelError
from edgepure.runtime.manifest import load_manifest

runner = CliRunner()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return open_dataset("synth", "val", n=8).as_float_nchw()


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return edgepure.create_classifier("signnet_xs").eval()


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort_session(path).run(None, feeds)[0]


@pytest.mark.parametrize(("name", "kw", "noise"), [
    ("median", {}, "input"), ("bitdepth", {"bits": 5}, "input"), ("gaussian", {"noise_std": 0.05}, "input"),
    ("gaussian", {"noise_std": 0.05}, "graph"),
])
def test_every_purifier_exports_and_matches_torch(tmp_path: Path, images: np.ndarray, classifier: torch.nn.Module,
                                                  name: str, kw: dict, noise: str) -> None:
    pur = edgepure.create_purifier(name, **kw)
    out = tmp_path / "model"
    m = export_pipeline(pur, classifier, out, images, batch=2, noise=noise, class_names=["c"] * 43)
    assert set(m["models"]) == {"classifier", "purifier", "pipeline"}
    for entry in m["models"].values():
        model = onnx.load(str(out / entry["file"]))
        assert model.opset_import[0].version == 18 and not list(out.glob("*.data"))
        assert entry["lint"]["errors"] == 0
        assert entry["parity"]["max_abs_diff"] <= 1e-3 or noise == "graph"
    x = images[:2]
    with torch.no_grad():
        if noise == "input" and pur.stochastic:
            nz = pur.sample_noise(torch.from_numpy(x), torch.Generator().manual_seed(3))
            ref = classifier(pur(torch.from_numpy(x), nz)).numpy()
            got = _run(out / "pipeline.onnx", {"image": x, "noise": nz.numpy()})
        else:
            got = _run(out / "pipeline.onnx", {"image": x})
            ref = classifier(pur(torch.from_numpy(x), pur.sample_noise(torch.from_numpy(x)))).numpy()
    if noise == "graph":
        assert [i.name for i in ort_session(out / "pipeline.onnx").get_inputs()] == ["image"]
        assert np.abs(got - ref).max() < 0.5  # different noise draws, same model
    else:
        np.testing.assert_allclose(got, ref, atol=1e-4)
    assert load_manifest(out)["purifier"]["noise"] == (noise if pur.stochastic else None)


def test_classifier_only_export(tmp_path: Path, images: np.ndarray, classifier: torch.nn.Module) -> None:
    m = export_pipeline(None, classifier, tmp_path / "c", images, batch=4)
    assert list(m["models"]) == ["classifier"]
    e = m["models"]["classifier"]
    assert e["inputs"] == [{"name": "image", "shape": [4, 3, 32, 32], "dtype": "float32"}]
    assert e["outputs"][0]["shape"] == [4, 43] and e["parity"]["top1_agreement"] == 1.0


def test_fp16_export_keeps_float32_io(tmp_path: Path, images: np.ndarray, classifier: torch.nn.Module) -> None:
    m = export_pipeline(edgepure.create_purifier("median"), classifier, tmp_path / "h", images, batch=2, precision="fp16")
    assert m["precision"] == "fp16"
    model = onnx.load(str(tmp_path / "h" / "pipeline.onnx"))
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {TensorProto.FLOAT}
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {TensorProto.FLOAT}
    assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    p = m["models"]["pipeline"]["parity"]
    assert p["atol"] == 5e-2 and p["top1_agreement"] >= 0.99 and 0 < p["max_abs_diff"] <= 5e-2
    assert all(p.dtype == torch.float32 for p in classifier.parameters())  # the caller's module is untouched


class _Leaky(torch.nn.Module):
    """Draws hidden noise: its ONNX graph cannot match PyTorch."""

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return (x + 0.1 * torch.randn_like(x)).clamp(0, 1)


def test_missed_tolerance_writes_nothing(tmp_path: Path, images: np.ndarray, classifier: torch.nn.Module) -> None:
    out = tmp_path / "bad"
    with pytest.raises(ParityError, match="does not match PyTorch"):
        export_pipeline(_Leaky(), classifier, out, images, batch=2)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_directory_needs_force(tmp_path: Path, images: np.ndarray, classifier: torch.nn.Module) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(edgepure.EdgepureError, match="exists; pass --force"):
        export_pipeline(None, classifier, out, images, batch=2)
    assert (out / "keep.txt").read_text() == "mine"


class _GuidedStep(torch.nn.Module):
    """Two steps of classifier-confidence guidance: a gradient inside the forward, as COUP/NAPPure need."""

    def __init__(self, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.needs_autograd = True

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        for _ in range(2):
            with torch.enable_grad():
                z = x.detach().requires_grad_(True)
                conf = torch.logsumexp(self.classifier(z), 1).sum()
                (g,) = torch.autograd.grad(conf, z)
            x = (x + 0.01 * g).clamp(0, 1)
        return x


def test_gradient_steps_export_into_the_graph(tmp_path: Path, images: np.ndarray, classifier: torch.nn.Module) -> None:
    m = export_pipeline(_GuidedStep(classifier), classifier, tmp_path / "g", images, batch=2)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "g" / "purifier.onnx")).graph.node}
    assert "ConvTranspose" in ops  # the convolution's backward, now a forward op
    assert m["models"]["purifier"]["parity"]["max_abs_diff"] < 1e-5


@pytest.mark.parametrize(("groups", "stride", "pad"), [(1, 1, 1), (1, 2, 1), (3, 1, 2), (2, 2, 0)])
def test_conv_backward_decomposition_matches_native(groups: int, stride: int, pad: int) -> None:
    torch.manual_seed(0)
    cin, cout = 6, 6
    x = torch.randn(2, cin, 9, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(cout, cin // groups, 3, 3, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(x, w, None, stride, pad, 1, groups)
    go = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), go)
    dx, dw, db = _conv_backward(go, x.detach(), w.detach(), None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0],
                                groups, [True, True, True])
    assert (dx - gx).abs().max() < 1e-12 and (dw - gw).abs().max() < 1e-12
    torch.testing.assert_close(db, go.sum((0, 2, 3)))


@pytest.mark.parametrize("pad", [[2, 3, 1, 4], [0, 1, 1, 0], [4, 4, 4, 4]])
@pytest.mark.parametrize("height", [1, 2, 7])
def test_replication_pad_backward_decomposition_matches_native(pad: list[int], height: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, height, 9, dtype=torch.float64, requires_grad=True)
    y = F.pad(x, pad, mode="replicate")
    go = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, go)
    assert (_replication_pad2d_backward(go, x.detach(), pad) - gx).abs().max() < 1e-12


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_backward_decomposition_matches_native(padding_mode: str, align_corners: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 10, dtype=torch.float64, requires_grad=True)
    grid = (torch.rand(2, 5, 6, 2, dtype=torch.float64) * 2.6 - 1.3)
    grid[0, 0, 0] = torch.tensor([1.0, -1.0], dtype=torch.float64)  # exactly on the border
    grid.requires_grad_(True)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)
    go = torch.randn_like(y)
    gx, gg = torch.autograd.grad(y, (x, grid), go)
    dx, dg = _grid_sampler_2d_backward(go, x.detach(), grid.detach(), 0, {"zeros": 0, "border": 1}[padding_mode],
                                       align_corners, [True, True])
    assert (dx - gx).abs().max() < 1e-12 and (dg - gg).abs().max() < 1e-12


def test_export_keeps_tiny_constants_we_rely_on() -> None:
    """The exporter drops an Add of a constant ≤ 1e-8; NAPPure's Adam floor is a Clip and must survive."""
    from edgepure.export.graph import to_onnx

    class Floor(torch.nn.Module):
        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return v.clamp_min(1e-16).sqrt()

    m = to_onnx(Floor(), [torch.zeros(3)], ["v"], ["y"])
    got = ort_session(m.SerializeToString()).run(None, {"v": np.zeros(3, np.float32)})[0]
    np.testing.assert_allclose(got, 1e-8, rtol=1e-5)


# --- the TensorRT lint on purpose-made bad graphs -------------------------------------------------------

def _graph(nodes: list, inits: list | None = None, opset: int = 18, inputs: list | None = None) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", inputs or [x], [y], initializer=inits or [])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _codes(model: onnx.ModelProto) -> set[str]:
    return {i.code for i in lint_model(model)}


def test_lint_clean_graph() -> None:
    assert _codes(_graph([helper.make_node("Relu", ["x"], ["y"])])) == set()


def test_lint_flags_each_hazard() -> None:
    grid = numpy_helper.from_array(np.zeros((1, 8, 8, 2), np.float32), "grid")
    assert "gridsample-mode" in _codes(_graph([helper.make_node("GridSample", ["x", "grid"], ["y"], mode="linear")], [grid]))
    assert "gridsample-mode" not in _codes(_graph([helper.make_node("GridSample", ["x", "grid"], ["y"], mode="bilinear")], [grid]))
    assert "maxpool-indices" in _codes(_graph([helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2])]))
    idx = numpy_helper.from_array(np.zeros((1, 4), np.int64), "idx")
    upd = numpy_helper.from_array(np.zeros((1,), np.float32), "upd")
    assert "scatternd-reduction" in _codes(_graph([helper.make_node("ScatterND", ["x", "idx", "upd"], ["y"], reduction="add")], [idx, upd]))
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(3, np.int8), "zp")
    assert "qdq-zero-point" in _codes(_graph([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
                                              helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])], [scale, zp]))
    assert "opset" in _codes(_graph([helper.make_node("Relu", ["x"], ["y"])], opset=21))
    assert "unsupported-op" in _codes(_graph([helper.make_node("Unique", ["x"], ["y"])]))
    w = numpy_helper.from_array(np.zeros((3, 3, 3, 3), np.int8), "w")
    ws = numpy_helper.from_array(np.full((3,), 0.1, np.float32), "ws")
    wz = numpy_helper.from_array(np.zeros((3,), np.int8), "wz")
    assert "convtranspose-axis" in _codes(_graph([helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=1),
                                                  helper.make_node("ConvTranspose", ["x", "wf"], ["y"])], [w, ws, wz]))
    assert "convtranspose-axis" not in _codes(_graph([helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=0),
                                                      helper.make_node("ConvTranspose", ["x", "wf"], ["y"])], [w, ws, wz]))
    ext = numpy_helper.from_array(np.zeros((1,), np.float32), "e")
    ext.data_location = TensorProto.EXTERNAL
    assert "external-data" in _codes(_graph([helper.make_node("Add", ["x", "e"], ["y"])], [ext]))


# --- CLI -------------------------------------------------------------------------------------------------

def test_cli_export_inspect_and_tamper(tmp_path: Path, tiny_run: Path) -> None:
    run = tiny_run
    out = tmp_path / "exported"
    r = runner.invoke(app, ["export", "--classifier", str(run), "--purifier", "gaussian", "--purifier-arg", "sigma=0.7",
                            "--n", "4", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    manifest = json.loads(r.stdout)
    assert manifest["purifier"]["config"]["sigma"] == 0.7
    assert "classifier: exporting" not in r.stderr  # --json: no progress lines
    r = runner.invoke(app, ["export", "--classifier", str(run), "--purifier", "median", "--n", "4", "--out",
                            str(tmp_path / "progress")])
    assert r.exit_code == 0, r.output
    for line in ("s] classifier: exporting", "s] purifier: onnxslim", "s] pipeline: parity against PyTorch on 4 batches",
                 "s] pipeline: TensorRT 10.3 lint"):
        assert line in r.stderr, r.stderr
    r = runner.invoke(app, ["inspect", str(out)])
    assert r.exit_code == 0 and "pipeline" in r.stdout and "0 errors" in r.stdout
    r = runner.invoke(app, ["export", "--classifier", str(run), "--n", "4", "--out", str(out)])
    assert r.exit_code == 1 and "pass --force" in r.stderr
    data = bytearray((out / "classifier.onnx").read_bytes())
    data[-1] ^= 1
    (out / "classifier.onnx").write_bytes(bytes(data))
    r = runner.invoke(app, ["inspect", str(out)])
    assert r.exit_code == 1 and "sha256 mismatch" in r.stderr
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_manifest(out)
    r = runner.invoke(app, ["export", "--classifier", str(run), "--purifier-arg", "oops", "--purifier", "median", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "key=value" in r.stderr


def test_eval_robust_scores_the_exported_graph(tmp_path: Path) -> None:
    from edgepure.evaluate import benchmark

    out = tmp_path / "exported"
    r = runner.invoke(app, ["export", "--purifier", "gaussian", "--purifier-arg",  # the default classifier
                            "noise_std=0.05", "--batch", "4", "--n", "8", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "manifest.json").read_text())["classifier"]["name"] == "signnet_s_cutmix"
    r = runner.invoke(app, ["eval", "robust", "--data", "synth", "--n", "10", "--attack", "additive,flow", "--threat",
                            "blind,adaptive", "--steps", "3", "--batch-size", "5", "--model", str(out), "--json"])
    assert r.exit_code == 0, r.output
    onnx_scored = json.loads(r.stdout)
    assert onnx_scored["scored_by"].endswith("pipeline.onnx") and onnx_scored["defense"] == "gaussian"
    data = open_dataset("synth", "val", n=10, seed=0)
    torch_scored = benchmark(edgepure.load_classifier(), data, edgepure.create_purifier("gaussian", noise_std=0.05),
                             ["additive", "flow"], ["blind", "adaptive"], steps=3, batch_size=5)
    # same attacks on the same twin, same noise: the graph reproduces PyTorch, so every number agrees
    assert torch_scored["clean_accuracy"] == onnx_scored["clean_accuracy"] > 0.5
    assert torch_scored["robust_accuracy"] == onnx_scored["robust_accuracy"]
    r = runner.invoke(app, ["eval", "robust", "--data", "synth", "--n", "2", "--model", str(out), "--defense", "median"])
    assert r.exit_code == 1 and "carries its own purifier" in r.stderr


def _onnx_classifier(tmp_path: Path, classifier: torch.nn.Module, batch: int = 2, opset: int = 18) -> Path:
    from edgepure.export.graph import to_onnx

    if opset == 18:
        model = to_onnx(classifier, [torch.rand(batch, 3, 32, 32)], ["input_0"], ["output_0"])
    else:  # an older linear classifier made by hand, as another toolchain would hand it over
        w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.01, (3072, 43)).astype(np.float32), "w")
        x = helper.make_tensor_value_info("input_0", TensorProto.FLOAT, [batch, 3, 32, 32])
        y = helper.make_tensor_value_info("output_0", TensorProto.FLOAT, [batch, 43])
        g = helper.make_graph([helper.make_node("Flatten", ["input_0"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["output_0"])],
                              "linear", [x], [y], initializer=[w])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    path = tmp_path / f"byo{opset}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("opset", [18, 17])
def test_bring_your_own_onnx_classifier(tmp_path: Path, images: np.ndarray, classifier: torch.nn.Module, opset: int) -> None:
    byo = _onnx_classifier(tmp_path, classifier, opset=opset)
    pur = edgepure.create_purifier("gaussian", noise_std=0.05)
    out = tmp_path / "merged"
    m = export_pipeline(pur, byo, out, images, batch=2, classifier_info={"source": str(byo), "format": "onnx"})
    pipe = ort_session(out / "pipeline.onnx")
    assert [i.name for i in pipe.get_inputs()] == ["image", "noise"] and pipe.get_outputs()[0].name == "logits"
    x = images[:2]
    nz = pur.sample_noise(torch.from_numpy(x), torch.Generator().manual_seed(0))
    purified = pur(torch.from_numpy(x), nz).numpy()
    expected = ort_session(byo).run(None, {"input_0": purified})[0]
    got = pipe.run(None, {"image": x, "noise": nz.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert m["models"]["pipeline"]["lint"]["errors"] == 0
    assert onnx.load(str(out / "classifier.onnx")).opset_import[0].version == 18


def test_onnx_classifier_with_the_wrong_shape_is_refused(tmp_path: Path, images: np.ndarray,
                                                         classifier: torch.nn.Module) -> None:
    byo = _onnx_classifier(tmp_path, classifier, batch=1)
    with pytest.raises(ModelError, match=r"has shape \[1, 3, 32, 32\], expected the static shape \[2, 3, 32, 32\]"):
        export_pipeline(edgepure.create_purifier("median"), byo, tmp_path / "x", images, batch=2)
    assert not (tmp_path / "x").exists()


def test_module_callable_classifier(tmp_path: Path) -> None:
    r = runner.invoke(app, ["export", "--classifier", "edgepure.models.classifiers:signnet_xs", "--purifier", "bitdepth",
                            "--n", "2", "--out", str(tmp_path / "mc"), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)["classifier"]
    assert info["format"] == "module:callable" and info["source"] == "edgepure.models.classifiers:signnet_xs"
    from edgepure.evaluate.exported import load_twin

    twin, purifier = load_twin(load_manifest(tmp_path / "mc"))  # the twin is rebuilt from the same callable
    assert type(twin).__name__ == "SignNet" and purifier is not None and purifier.config() == {"bits": 4}
    r = runner.invoke(app, ["export", "--classifier", "edgepure.nothing:here", "--out", str(tmp_path / "no")])
    assert r.exit_code == 1 and "cannot import" in r.stderr
    r = runner.invoke(app, ["export", "--classifier", "signnet_s", "--purifier", "median", "--steps", "4", "--out", str(tmp_path / "no")])
    assert r.exit_code == 1 and "purifier 'median'" in r.stderr  # median has no steps: refused, not ignored
    r = runner.invoke(app, ["export", "--classifier", "signnet_s", "--steps", "4", "--out", str(tmp_path / "no")])
    assert r.exit_code == 1 and "without --purifier" in r.stderr
    assert not (tmp_path / "no").exists()


def test_macs_of_a_known_graph(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgepure.export.flops import count_macs

    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    wt = numpy_helper.from_array(np.zeros((8, 4, 3, 3), np.float32), "wt")
    g = numpy_helper.from_array(np.zeros((4 * 16 * 16, 10), np.float32), "g")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),   # 8×16×16 out
             helper.make_node("ConvTranspose", ["c", "wt"], ["t"], pads=[1, 1, 1, 1]),       # 4×16×16 out
             helper.make_node("Relu", ["t"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "g"], ["y"])]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w, wt, g])
    r = count_macs(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10))
    assert r["by_op"] == {"Conv": 8 * 16 * 16 * 3 * 9, "ConvTranspose": 8 * 16 * 16 * 4 * 9, "Gemm": 1024 * 10}
    assert r["macs"] == sum(r["by_op"].values()) and r["uncounted"] == {"Relu": 1, "Flatten": 1}


def test_flops_benchmark_smoke(tmp_path: Path) -> None:
    import subprocess
    import sys

    import edgepure
    from edgepure.data import open_dataset

    d = tmp_path / "m"
    export_pipeline(None, edgepure.create_classifier("signnet_xs", num_classes=43).eval(), d,
                    open_dataset("synth", "val", n=2).as_float_nchw())
    out = tmp_path / "f.json"
    r = subprocess.run([sys.executable, "benchmarks/flops.py", "--models", str(d), "--iters", "3", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    row = rep["results"][0]
    assert rep["peak"]["gflops"] > 0 and row["mflops_per_crop"] > 0 and 0 < row["fraction_of_peak"]
    assert "| m | classifier |" in r.stdout


def test_parity_counts_nan_as_a_miss() -> None:
    """NaN compares false with any tolerance: a graph whose output is NaN must not pass (float16 NAPPure on an
    untrained prior gives NaN everywhere)."""
    from edgepure.export.checks import parity

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("purified", TensorProto.FLOAT, [1, 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["image"], ["purified"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18)])
    feed = {"image": np.array([[0.0, np.nan, 1.0]], dtype=np.float32)}
    with pytest.raises(ParityError):
        parity(model, lambda f: np.zeros((1, 3), np.float32), [feed], atol=float("inf"))
    assert parity(model, lambda f: np.nan_to_num(f["image"]), [{"image": np.ones((1, 3), np.float32)}], atol=1e-6)


def test_simplify_keeps_the_noise_drawn_in_the_graph() -> None:
    """onnxslim folds a RandomNormal into a constant (the same noise on every run); simplify holds draws out."""
    from edgepure.export.checks import simplify

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])
    one = numpy_helper.from_array(np.ones(3, np.float32), "one")
    folds = [helper.make_node("Mul", [f"c{i}", "one"], [f"c{i + 1}"]) for i in range(20)]  # constant: folded away
    nodes = [helper.make_node("RandomNormal", [], ["n"], shape=[1, 3], dtype=TensorProto.FLOAT),
             helper.make_node("Identity", ["one"], ["c0"]), *folds, helper.make_node("Add", ["image", "n"], ["a"]),
             helper.make_node("Add", ["a", "c20"], ["out"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [one]), opset_imports=[helper.make_opsetid("", 18)])
    slim, report = simplify(model)
    assert "RandomNormal" in {n.op_type for n in slim.graph.node} and [i.name for i in slim.graph.input] == ["image"]
    sess = ort_session(slim.SerializeToString())
    a, b = (sess.run(None, {"image": np.zeros((1, 3), np.float32)})[0] for _ in range(2))
    assert not np.array_equal(a, b)  # fresh noise on every run
