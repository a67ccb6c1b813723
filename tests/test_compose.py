"""Graph-level unrolling (edgepure.export.compose): NAPPure's K-step graph composed from one exported step equals
PyTorch and the whole-graph export, stores each prior weight once whatever K, and puts each step's constants
in that step."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import edgepure
from edgepure.export.compose import assemble, export_pieces
from edgepure.export.graph import to_onnx
from edgepure.models.registry import create_prior
from edgepure.runtime.backends import ort_session


@pytest.fixture(scope="module")
def prior() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_prior("edm_unet_xs", pretrained=False).eval()


def _purifier(prior: torch.nn.Module, steps: int, **kw: object) -> torch.nn.Module:
    # distortion with a denoised start: the start calls the prior too; the flow makes step 2 differ from step 1
    return edgepure.create_purifier("nappure", kind="distortion", steps=steps, prior=prior, init_sigma=0.5,
                                    tuned="none", **kw).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def pieces(prior: torch.nn.Module, x: torch.Tensor):  # type: ignore[no-untyped-def]
    """Start, step and finish exported once; none of them depends on K or on the step sizes."""
    pur = _purifier(prior, 2)
    return export_pieces(pur.unrolled(x), x, pur.sample_noise(x)[:, 0])


def _composed(pieces, pur: torch.nn.Module, x: torch.Tensor) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    return assemble(pieces, pur.unrolled(x).constants, x.shape, pur.noise_shape(x))


def _run(model: onnx.ModelProto, x: torch.Tensor, noise: torch.Tensor) -> np.ndarray:
    return ort_session(model.SerializeToString()).run(None, {"image": x.numpy(), "noise": noise.numpy()})[0]


def _torch(pur: torch.nn.Module, x: torch.Tensor, noise: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return pur(x, noise).numpy()


def test_composed_graph_matches_torch_and_the_whole_graph_export(pieces, prior: torch.nn.Module,  # type: ignore[no-untyped-def]
                                                                 x: torch.Tensor) -> None:
    pur = _purifier(prior, 2)
    noise = pur.sample_noise(x, torch.Generator().manual_seed(1))
    composed = _run(_composed(pieces, pur, x), x, noise)
    whole = _run(to_onnx(pur, [x, noise], ["image", "noise"], ["purified"], trace_autograd=True), x, noise)
    ref = _torch(pur, x, noise)
    assert np.abs(ref - x.numpy()).max() > 1e-2  # the purifier changed the images
    np.testing.assert_allclose(composed, ref, atol=1e-5)
    np.testing.assert_allclose(composed, whole, atol=1e-5)


def _big(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if np.prod(t.dims) > 16}


def test_each_prior_weight_is_stored_once_whatever_k(pieces, prior: torch.nn.Module, x: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    k2, k4 = _composed(pieces, _purifier(prior, 2), x), _composed(pieces, _purifier(prior, 4), x)
    big2, big4 = _big(k2), _big(k4)
    assert set(big2) == set(big4)
    assert sum(a.nbytes for a in big2.values()) == sum(a.nbytes for a in big4.values())
    for name, p in prior.state_dict().items():
        if p.ndim == 4:  # every convolution kernel: exactly one initialiser holds it, shared by start and steps
            same = [n for n, a in big4.items() if a.shape == tuple(p.shape) and np.array_equal(a, p.numpy())]
            assert len(same) == 1, name
    # the steps are copies of one step: 4 steps hold twice the nodes of 2 (plus a Gather for each one's noise)
    grow = len(k4.graph.node) - len(k2.graph.node)
    assert grow == 2 * (len(pieces.step.graph.node) + 1)


def test_each_step_gets_its_own_constants(pieces, prior: torch.nn.Module, x: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    """Step 2's step sizes changed alone: only step 2's constants differ, and the graph follows PyTorch."""
    a = _purifier(prior, 2)
    b = _purifier(prior, 2, step_scale={"x": [1.0, 0.0], "flow": [1.0, 3.0]})
    ga, gb = _composed(pieces, a, x), _composed(pieces, b, x)
    consts = {t.name: numpy_helper.to_array(t) for t in ga.graph.initializer}
    consts_b = {t.name: numpy_helper.to_array(t) for t in gb.graph.initializer}
    np.testing.assert_array_equal(consts["step1/consts"], consts_b["step1/consts"])
    assert not np.array_equal(consts["step2/consts"], consts_b["step2/consts"])
    assert not np.array_equal(consts["step1/consts"], consts["step2/consts"])  # the cosine schedule and Adam's t
    noise = a.sample_noise(x, torch.Generator().manual_seed(2))
    out_a, out_b = _run(ga, x, noise), _run(gb, x, noise)
    np.testing.assert_allclose(out_a, _torch(a, x, noise), atol=1e-5)
    np.testing.assert_allclose(out_b, _torch(b, x, noise), atol=1e-5)
    assert np.abs(out_a - out_b).max() > 1e-3
    # every step fed step 1's constants would be another purifier: PyTorch's answer tells them apart
    step1 = a.unrolled(x).constants[0]
    assert np.abs(_run(assemble(pieces, [step1, step1], x.shape, a.noise_shape(x)), x, noise) - out_a).max() > 1e-4


def test_export_composes_nappure_and_says_where_it_is(tmp_path: Path, prior: torch.nn.Module) -> None:
    """export_pipeline composes the unrolled purifier (its manifest has the composed graph) and reports each model
    and stage to ``progress``."""
    from edgepure.data import open_dataset
    from edgepure.export.pipeline import export_pipeline

    images = open_dataset("synth", "val", n=2).as_float_nchw()
    said: list[str] = []
    pur = _purifier(prior, 2)
    clf = edgepure.create_classifier("signnet_xs").eval()
    m = export_pipeline(pur, clf, tmp_path / "m", images, batch=2, parity_batches=1, progress=said.append)
    assert m["models"]["purifier"]["parity"]["max_abs_diff"] < 1e-4
    assert m["models"]["pipeline"]["parity"]["top1_agreement"] == 1.0
    for line in ("purifier: exporting one step (of 2)", "purifier: composing 2 steps",
                 "purifier: parity against PyTorch on 1 batch", "pipeline: TensorRT 10.3 lint"):
        assert line in said
    names = {n.name for n in onnx.load(str(tmp_path / "m" / "purifier.onnx")).graph.node}
    assert any(n.startswith("step2/") for n in names)


def test_float16_purification_is_finite(prior: torch.nn.Module, x: torch.Tensor) -> None:
    """Adam's ε² = 1e-16 rounds to 0 in float16, where a zero gradient then divided 0 by 0: every pixel NaN, so no
    NAPPure passed a float16 export's parity. Floored at float16's smallest normal number, it follows float32."""
    from edgepure.export.wrappers import HalfPrecision

    for kind in ("distortion", "joint"):
        pur = edgepure.create_purifier("nappure", kind=kind, steps=2, prior=prior, tuned="none").eval()
        noise = pur.sample_noise(x, torch.Generator().manual_seed(3))
        with torch.no_grad():
            half, full = HalfPrecision(pur)(x, noise), pur(x, noise)
        assert torch.isfinite(half).all(), kind
        assert (half - full).abs().max() < 5e-2, kind
