"""Fixtures: tiny data sets in the official layouts, made by the tests themselves."""

from __future__ import annotations

import os
import pickle
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgepure.runtime.imageio import encode_ppm
from edgepure.runtime.synth import render_sign

REPO = Path(__file__).resolve().parents[1]
SHARED_GTSRB = Path(os.environ.get("EDGEPURE_GTSRB", REPO.parent / "shared" / "data" / "gtsrb"))

# classes, tracks per class, frames per track of the fixture
FIXTURE_CLASSES = (1, 14, 17, 33)
FIXTURE_TRACKS = 4
FIXTURE_FRAMES = 3


def _frame(label: int, seed: int, size: tuple[int, int]) -> np.ndarray:
    """A rendered sign at 32 px, placed in a larger frame so that the ROI crop is meaningful."""
    h, w = size
    img = np.full((h, w, 3), 90, dtype=np.uint8)
    sign = render_sign(label, np.random.default_rng(seed), size=32)
    img[4 : 4 + 32, 5 : 5 + 32] = sign
    return img


def make_gtsrb(root: Path, with_test: bool = True, test_csv_in_images: bool = False) -> Path:
    """Write a tiny GTSRB tree under ``root/GTSRB`` in the official layout; return ``root``."""
    base = root / "GTSRB" / "Final_Training" / "Images"
    for label in FIXTURE_CLASSES:
        d = base / f"{label:05d}"
        d.mkdir(parents=True)
        rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for t in range(FIXTURE_TRACKS):
            for f in range(FIXTURE_FRAMES):
                name = f"{t:05d}_{f:05d}.ppm"
                (d / name).write_bytes(encode_ppm(_frame(label, label * 100 + t * 10 + f, (40, 42))))
                # ROI given for an "original" image twice as large as the stored one
                rows.append(f"{name};84;80;10;8;72;70;{label}")
        (d / f"GT-{label:05d}.csv").write_text("\n".join(rows) + "\n")
    if with_test:
        images = root / "GTSRB" / "Final_Test" / "Images"
        images.mkdir(parents=True)
        rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for i, label in enumerate(FIXTURE_CLASSES * 2):
            name = f"{i:05d}.ppm"
            (images / name).write_bytes(encode_ppm(_frame(label, 9000 + i, (40, 42))))
            rows.append(f"{name};84;80;10;8;72;70;{label}")
        csv_dir = images if test_csv_in_images else images.parent
        (csv_dir / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return root


def zip_tree(src: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(src).as_posix())
    return dest


@pytest.fixture
def umask() -> int:
    """This process's umask (read by setting it and putting it back): an ordinary new file has mode 0o666 & ~umask."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture
def gtsrb_dir(tmp_path: Path) -> Path:
    return make_gtsrb(tmp_path / "data")


@pytest.fixture
def gtsrb_zip(tmp_path: Path) -> Path:
    root = make_gtsrb(tmp_path / "src", with_test=False)
    return zip_tree(root, tmp_path / "GTSRB_Final_Training_Images.zip")


def make_cifar(root: Path, n_per_batch: int = 20) -> Path:
    """A CIFAR-10 python tree with small batches, pickled like the official files (bytes keys)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(x) for x in rng.integers(0, 10, n_per_batch)],
            b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n_per_batch)],
        }
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [b"airplane"], b"num_cases_per_batch": n_per_batch}
    (d / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    return make_cifar(tmp_path / "cifar")


@pytest.fixture(scope="session")
def real_gtsrb() -> Path:
    if not SHARED_GTSRB.exists():
        pytest.skip(f"real GTSRB data not found at {SHARED_GTSRB}")
    return SHARED_GTSRB


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training run folder of signnet_xs after two steps on the fixture data (a valid --model checkpoint)."""
    from edgepure.training.classifier import TrainConfig, train_classifier

    base = tmp_path_factory.mktemp("tiny")
    data = make_gtsrb(base / "data", with_test=False)
    cfg = TrainConfig(data=str(data), out=str(base / "run"), model="signnet_xs", epochs=1, batch_size=8,
                      val_fraction=0.25, max_steps=2)
    train_classifier(cfg, log=lambda s: None)
    return base / "run"


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Exported model directories on the shipped classifier: ``plain`` (classifier only), ``median``
    (median-filter pipeline) and ``set`` (a variant set of the two, cheapest first)."""
    import edgepure
    from edgepure.data import open_dataset
    from edgepure.export.pipeline import export_pipeline
    from edgepure.runtime.variants import write_variants

    root = tmp_path_factory.mktemp("models")
    images = open_dataset("synth", "val", n=4).as_float_nchw()
    clf = edgepure.load_classifier()
    names = clf.pretrained_cfg["class_names"]
    info = {"name": clf.edgepure_name}
    export_pipeline(None, clf, root / "set" / "plain", images, class_names=names, classifier_info=info)
    export_pipeline(edgepure.create_purifier("median", kernel_size=3), clf, root / "set" / "median", images,
                    class_names=names, classifier_info=info)
    write_variants(root / "set", [("plain", "plain"), ("median", "median")])
    return {"plain": root / "set" / "plain", "median": root / "set" / "median", "set": root / "set"}


def blocked_imports(*names: str) -> str:
    """Python source that makes importing any of ``names`` (or their submodules) fail, as on a device
    without them; run it first in a subprocess, then import what is under test."""
    return textwrap.dedent(f"""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                top = name.split(".")[0]
                if top in {names!r}:
                    # what Python raises for a package that is not installed
                    raise ModuleNotFoundError(f"No module named {{top!r}} (blocked in this test)", name=top)
                return None

        sys.meta_path.insert(0, Block())
    """)
