import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgepure.data import dataset_kind, open_dataset
from edgepure.data.cifar import load_cifar10, safe_unpickle
from edgepure.runtime.errors import DataError, UnsafeFileError


def test_loads_official_layout(cifar_dir: Path) -> None:
    train = load_cifar10(cifar_dir, "train")
    test = load_cifar10(cifar_dir / "cifar-10-batches-py", "test")
    assert train.images.shape == (100, 32, 32, 3) and test.images.shape == (20, 32, 32, 3)
    # pixel layout: the row of 3072 is R plane, G plane, B plane, each 32×32 row-major
    raw = pickle.loads((cifar_dir / "cifar-10-batches-py" / "test_batch").read_bytes())
    np.testing.assert_array_equal(test.images[0, 0, 1], raw[b"data"][0, [1, 1025, 2049]])
    assert test.labels.tolist() == raw[b"labels"]
    assert train.class_names[0] == "airplane"


def test_from_tar_gz_and_dispatch(cifar_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(cifar_dir / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    assert dataset_kind(str(archive)) == "cifar10"
    a = load_cifar10(archive, "test")
    b = load_cifar10(cifar_dir, "test")
    np.testing.assert_array_equal(a.images, b.images)
    val = open_dataset(str(cifar_dir), "val", val_fraction=0.2)
    tr = open_dataset(str(cifar_dir), "train", val_fraction=0.2)
    assert len(val) == 20 and len(tr) == 80 and not set(val.names) & set(tr.names)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_refuses_code_execution(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(str(marker)), b"labels": [1]}, protocol=2)
    with pytest.raises(UnsafeFileError, match=r"refusing to unpickle (posix|os)\.system"):
        safe_unpickle(payload, "evil_batch")
    assert not marker.exists()


def test_refuses_object_arrays() -> None:
    payload = pickle.dumps(np.array([{"a": 1}], dtype=object), protocol=2)
    with pytest.raises(UnsafeFileError, match="dtype"):
        safe_unpickle(payload, "x")


def test_plain_values_pass() -> None:
    obj = {b"k": [1, 2.5, (b"x", "y")], "arr": np.arange(6, dtype=np.uint8).reshape(2, 3)}
    out = safe_unpickle(pickle.dumps(obj, protocol=2))
    assert out["k"] == [1, 2.5, (b"x", "y")]
    np.testing.assert_array_equal(out["arr"], obj["arr"])


def test_label_out_of_range(cifar_dir: Path) -> None:
    path = cifar_dir / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes())
    batch[b"labels"][3] = 10
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"test_batch: label 10 of image 3 out of range"):
        load_cifar10(cifar_dir, "test")


def test_wrong_shape_and_truncation(cifar_dir: Path) -> None:
    path = cifar_dir / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes())
    batch[b"data"] = batch[b"data"][:, :100]
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"expected data of shape N×3072 uint8"):
        load_cifar10(cifar_dir, "test")
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match=r"test_batch: not a readable CIFAR batch"):
        load_cifar10(cifar_dir, "test")


def test_missing_batches(cifar_dir: Path) -> None:
    (cifar_dir / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="batch files missing: data_batch_3"):
        load_cifar10(cifar_dir, "train")
