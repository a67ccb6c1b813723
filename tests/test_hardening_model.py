"""A model directory whose graph, manifest or calls do not fit is refused with one clear error (issue 44, items 1, 6
and 9's EdgeModel calls), never run with wrong answers or a traceback.

The graphs are built node by node with ``onnx.helper`` (a pooled linear classifier, an identity purifier), so each
case is a directory of its own in milliseconds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgepure.cli.main import app
from edgepure.runtime.errors import ConfigError, EdgepureError, ModelError
from edgepure.runtime.manifest import load_manifest, sha256_file
from edgepure.runtime.model import load_model
from edgepure.runtime.variants import list_variants

CLASSES = [f"class {i}" for i in range(43)]


def _graph(classes: int = 43, size: int = 32, batch: int = 1, uint8: bool = False, purifier: bool = False,
           seed: int = 0) -> onnx.ModelProto:
    """``image[batch, 3, size, size]`` → logits ``[batch, classes]`` (mean colour times a fixed matrix), or the
    image itself (``purifier``)."""
    dtype = TensorProto.UINT8 if uint8 else TensorProto.FLOAT
    image = helper.make_tensor_value_info("image", dtype, [batch, 3, size, size])
    nodes, inits = [], []
    x = "image"
    if uint8:
        nodes.append(helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT))
        x = "x"
    if purifier:
        nodes.append(helper.make_node("Identity", [x], ["purified"]))
        out = helper.make_tensor_value_info("purified", TensorProto.FLOAT, [batch, 3, size, size])
    else:
        w = np.random.default_rng(seed).standard_normal((3, classes)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "w"))
        nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"]),
                  helper.make_node("Flatten", ["pooled"], ["flat"]),
                  helper.make_node("MatMul", ["flat", "w"], ["logits"])]
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])
    graph = helper.make_graph(nodes, "g", [image], [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _io(model: onnx.ModelProto) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def describe(values: Any) -> list[dict[str, Any]]:
        return [{"name": v.name, "shape": [d.dim_value for d in v.type.tensor_type.shape.dim],
                 "dtype": helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name} for v in values]

    return describe(model.graph.input), describe(model.graph.output)


def _model_dir(root: Path, graphs: dict[str, onnx.ModelProto], listed: Optional[dict[str, onnx.ModelProto]] = None,
               **fields: Any) -> Path:
    """A model directory holding ``graphs`` whose manifest describes ``listed`` (default: the graphs themselves)
    with the files' true sha256 — a manifest edited to match swapped files, as a careless copy makes."""
    root.mkdir(parents=True)
    models = {}
    for role, graph in graphs.items():
        path = root / f"{role}.onnx"
        path.write_bytes(graph.SerializeToString())
        inputs, outputs = _io((listed or graphs)[role])
        models[role] = {"file": path.name, "sha256": sha256_file(path), "inputs": inputs, "outputs": outputs}
    manifest = {"schema": 1, "batch": 1, "precision": "fp32", "models": models, "class_names": CLASSES,
                "preprocessing": {"input": "float32 RGB NCHW in [0, 1]", "size": [32, 32]}, "purifier": None,
                **fields}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _frames(n: int = 2) -> list[np.ndarray]:
    return list(np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))


def test_a_directory_that_fits_classifies(tmp_path: Path) -> None:
    """The baseline of every case below: the same construction, consistent, loads and classifies."""
    d = _model_dir(tmp_path / "ok", {"classifier": _graph(), "purifier": _graph(purifier=True),
                                     "pipeline": _graph(seed=1)})
    preds = load_model(d).classify(_frames(3))
    assert len(preds) == 3 and all(0 <= p.label < 43 for p in preds)
    assert len(load_model(d, mode="split").classify(_frames(1))) == 1


def test_an_output_shape_the_graph_leaves_open_still_loads(tmp_path: Path) -> None:
    """A user's ONNX classifier may declare its logits as [N, 43] or with no shape: nothing to refuse there."""
    for name, dims in (("symbolic", ["N", 43]), ("none", None)):
        graph = _graph()
        graph.graph.output[0].CopyFrom(helper.make_tensor_value_info("logits", TensorProto.FLOAT, dims))
        assert len(load_model(_model_dir(tmp_path / name, {"classifier": graph})).classify(_frames(1))) == 1


@pytest.mark.parametrize("case", ["classes", "size", "batch"])
def test_a_graph_swapped_under_its_manifest_is_refused(tmp_path: Path, case: str) -> None:
    swapped = {"classes": _graph(classes=10), "size": _graph(size=64), "batch": _graph(batch=8)}[case]
    d = _model_dir(tmp_path / case, {"classifier": swapped}, listed={"classifier": _graph()})
    if case == "size":  # the case that ran: nothing else in the manifest names the input size
        manifest = json.loads((d / "manifest.json").read_text())
        del manifest["preprocessing"]["size"]
        (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="but the manifest lists"):
        load_model(d)


def test_another_class_count_is_refused_even_when_the_manifest_was_edited_to_match(tmp_path: Path) -> None:
    d = _model_dir(tmp_path / "m", {"classifier": _graph(classes=10)})
    with pytest.raises(ModelError, match="scores 10 classes, the manifest names 43"):
        load_model(d)


def test_a_batch_other_than_the_manifests_is_refused(tmp_path: Path) -> None:
    d = _model_dir(tmp_path / "m", {"classifier": _graph(batch=8)}, batch=1)
    with pytest.raises(ModelError, match="has batch 8, the manifest says 1"):
        load_model(d)


def test_a_uint8_input_graph_is_refused_at_load(tmp_path: Path) -> None:
    d = _model_dir(tmp_path / "m", {"classifier": _graph(uint8=True)})
    with pytest.raises(ModelError, match="uint8; this runtime feeds float32"):
        load_model(d)


def test_the_purifier_graph_in_the_pipelines_place_is_refused(tmp_path: Path) -> None:
    d = _model_dir(tmp_path / "m", {"classifier": _graph(), "pipeline": _graph(purifier=True)})
    with pytest.raises(ModelError, match="pipeline graph returns purified\\[1, 3, 32, 32\\].*expected float32 logits"):
        load_model(d)


def test_a_mismatch_is_an_error_line_in_run_and_bench(tmp_path: Path) -> None:
    d = _model_dir(tmp_path / "m", {"classifier": _graph(classes=10)}, listed={"classifier": _graph()})
    for args in (["run", "synth://?n=4", "--headless", "--model", str(d)], ["bench", "--model", str(d), "--iters", "1"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "error:" in result.output and "but the manifest lists" in result.output
        assert "Traceback" not in result.output


def _edit(d: Path, change: Any) -> Path:
    manifest = json.loads((d / "manifest.json").read_text())
    change(manifest)
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


@pytest.mark.parametrize("change, message", [
    (lambda m: m["models"]["classifier"].pop("sha256"), "'sha256' must be 64"),
    (lambda m: m["models"]["classifier"].pop("file"), "'file' must be a file name"),
    (lambda m: m.__setitem__("models", ["classifier.onnx"]), "'models' must be an object"),
    (lambda m: m["models"].__setitem__("classifier", "classifier.onnx"), "\\['classifier'\\]: expected an object"),
    (lambda m: m["models"]["classifier"].__setitem__("file", "../x.onnx"), "is not inside the model directory"),
    (lambda m: m["models"]["classifier"].__setitem__("file", "/etc/passwd"), "is not inside the model directory"),
    (lambda m: m["models"]["classifier"].__setitem__("inputs", [{"name": "image"}]), "\\['inputs'\\]\\[0\\]"),
    (lambda m: m.__setitem__("class_names", "stop"), "'class_names' must be a list"),
    (lambda m: m.__setitem__("engines", []), "'engines' must be an object"),
    (lambda m: m["preprocessing"].__setitem__("size", True), "'size' must be \\[height, width\\]"),
    (lambda m: m["preprocessing"].__setitem__("input", 3), "'input' must be a string"),
    (lambda m: m["models"].__setitem__("detector", m["models"]["classifier"]), "unknown graph role 'detector'"),
])
def test_a_malformed_manifest_is_one_clear_error(tmp_path: Path, change: Any, message: str) -> None:
    d = _edit(_model_dir(tmp_path / "m", {"classifier": _graph()}), change)
    with pytest.raises(ModelError, match=message):
        load_manifest(d)
    for args in (["run", "synth://?n=2", "--headless", "--model", str(d)], ["bench", "--model", str(d)],
                 ["inspect", str(d)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1 and "error:" in result.output, (args, result.output)
        assert not isinstance(result.exception, (KeyError, AttributeError, TypeError)), result.exception


def test_model_calls_that_cannot_be_answered_are_clear_errors(tmp_path: Path) -> None:
    model = load_model(_model_dir(tmp_path / "m", {"classifier": _graph()}))
    frames = _frames(4)
    with pytest.raises(ConfigError, match="top-k must be an integer ≥ 1, got 0"):
        model.classify(frames, k=0)
    stacked = np.stack(frames)  # an N×H×W×3 array is N frames
    assert [p.label for p in model.classify(stacked)] == [p.label for p in model.classify(frames)]
    with pytest.raises(ConfigError, match="pass \\[frame\\] for one frame"):
        model.classify(frames[0])
    model.close()
    model.close()  # twice is harmless
    with pytest.raises(ConfigError, match="is closed"):
        model.classify(frames)


# -- fuzzing the loaders of untrusted JSON ------------------------------------------------------------------
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
_KEYS = ["schema", "models", "class_names", "preprocessing", "purifier", "classifier", "engines", "batch",
         "precision", "file", "sha256", "inputs", "outputs", "shape", "name", "dtype"]


def _mutate(value: Any, draw: Any) -> Any:
    """``value`` with one of its nested fields replaced by arbitrary JSON, or removed."""
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        out = dict(value)
        if draw(st.booleans()):
            out[key] = _mutate(out[key], draw)
        elif draw(st.booleans()):
            out.pop(key)
        else:
            out[key] = draw(_json)
        return out
    if isinstance(value, list) and value and draw(st.booleans()):
        i = draw(st.integers(0, len(value) - 1))
        return value[:i] + [_mutate(value[i], draw)] + value[i + 1:]
    return draw(_json | st.dictionaries(st.sampled_from(_KEYS), _json, max_size=4))


@pytest.fixture(scope="module")
def valid_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _model_dir(tmp_path_factory.mktemp("fuzz") / "m", {"classifier": _graph(), "purifier": _graph(purifier=True),
                                                               "pipeline": _graph(seed=1)})


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_manifests_load_or_fail_with_a_model_error(valid_dir: Path, data: Any) -> None:
    """Whatever JSON (or bytes) stands in manifest.json, loading ends in a manifest or a ModelError; a loaded one
    then opens as a model or fails with an EdgepureError — never another exception."""
    base = json.loads((valid_dir / "manifest.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(shutil.copytree(valid_dir, Path(tmp) / "m"))
        if data.draw(st.integers(0, 9)) == 0:
            (d / "manifest.json").write_bytes(data.draw(st.binary(max_size=64)))
        else:
            (d / "manifest.json").write_text(json.dumps(_mutate(base, data.draw)))
        try:
            load_manifest(d)
        except ModelError:
            return
        try:
            load_model(d).close()
        except EdgepureError:
            pass


@settings(max_examples=100, deadline=None, derandomize=True)
@given(body=_json | st.builds(lambda v: {"schema": 1, "variants": v}, _json),
       raw=st.one_of(st.none(), st.binary(max_size=32)))
def test_fuzzed_variant_indexes_list_or_fail_with_a_model_error(body: Any, raw: Optional[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "set"
        (d / "k4").mkdir(parents=True)
        (d / "k4" / "manifest.json").write_text("{}")
        (d / "variants.json").write_bytes(raw if raw is not None else json.dumps(body).encode())
        try:
            found = list_variants(d)
        except ModelError:
            return
        assert found and all(v.path.is_dir() and os.fspath(d.resolve()) in os.fspath(v.path) for v in found)
