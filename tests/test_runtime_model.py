"""The torch-free runtime on an exported model directory."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import edgepure
from edgepure.data import open_dataset
from edgepure.export.pipeline import export_pipeline
from edgepure.runtime.errors import ConfigError, ModelError
from edgepure.runtime.model import load_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rt") / "model"
    images = open_dataset("synth", "val", n=8).as_float_nchw()
    clf = edgepure.load_classifier()
    export_pipeline(edgepure.create_purifier("gaussian", sigma=0.6, noise_std=0.02), clf, out, images, batch=4,
                    class_names=clf.pretrained_cfg["class_names"])
    return out


def test_classifies_rendered_signs_without_torch(exported: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from edgepure.runtime.model import load_model
        from edgepure.runtime.synth import render_dataset
        images, labels = render_dataset(40, seed=77, size=48)   # other size than the model: the runtime resizes
        m = load_model({str(exported)!r})
        a = [p.label for p in m.classify(list(images))]
        b = [p.label for p in load_model({str(exported)!r}).classify(list(images))]
        assert a == b, "not deterministic"
        print(np.mean(np.array(a) == labels))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) >= 0.85


def test_matches_pytorch(exported: Path) -> None:
    m = load_model(exported)
    data = open_dataset("synth", "val", n=6, seed=3)
    pur = edgepure.create_purifier("gaussian", sigma=0.6, noise_std=0.02)
    clf = edgepure.load_classifier()
    x = data.as_float_nchw()
    logits = m.logits(x)  # 6 images through a batch-4 graph: padded, then trimmed
    assert logits.shape == (6, 43)
    with torch.no_grad():
        ref = clf(pur(torch.from_numpy(x), torch.zeros(6, 3, 32, 32))).numpy()
    # the noise differs (runtime draws its own), the argmax of a mild purifier does not
    assert (logits.argmax(1) == ref.argmax(1)).mean() >= 5 / 6
    preds = m.classify(list(data.images), k=5)
    assert len(preds[0].topk) == 5 and preds[0].name == m.class_names[preds[0].label]
    probs = [p for _, _, p in preds[0].topk]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9 and probs[0] == preds[0].confidence


def test_bad_inputs(exported: Path) -> None:
    m = load_model(exported)
    with pytest.raises(ConfigError, match="H×W×3 RGB frame"):
        m.classify([np.zeros((32, 32), np.uint8)])
    with pytest.raises(ConfigError, match="uint8"):
        m.classify([np.zeros((32, 32, 3), np.float32)])
    with pytest.raises(ConfigError, match="NaN"):
        m.logits(np.full((1, 3, 32, 32), np.nan, np.float32))
    with pytest.raises(ConfigError, match="ROI .* is empty"):
        m.classify([np.zeros((40, 40, 3), np.uint8)], rois=[(10, 10, 5, 20)])
    with pytest.raises(ModelError, match="no manifest"):
        load_model(exported.parent)


def test_a_manifest_whose_preprocessing_the_runtime_cannot_do_is_refused(exported: Path, tmp_path: Path) -> None:
    import json
    import shutil

    for field, value, message in [("input", "float32 BGR NCHW in [0, 255]", "this runtime feeds"),
                                  ("size", [64, 64], "preprocessing size \\[64, 64\\]")]:
        bad = tmp_path / field
        shutil.copytree(exported, bad)
        manifest = json.loads((bad / "manifest.json").read_text())
        manifest["preprocessing"][field] = value
        (bad / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ModelError, match=message):
            load_model(bad)
