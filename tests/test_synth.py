import numpy as np
import pytest

from edgepure.data import open_dataset
from edgepure.runtime.errors import ConfigError
from edgepure.runtime.synth import render_dataset, render_sign


def test_deterministic_by_seed() -> None:
    a, la = render_dataset(50, seed=3)
    b, lb = render_dataset(50, seed=3)
    c, _ = render_dataset(50, seed=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)


def test_image_i_depends_only_on_seed_and_index() -> None:
    a, la = render_dataset(10, seed=1)
    b, lb = render_dataset(30, seed=1)
    for i in range(10):
        if la[i] == lb[i]:
            np.testing.assert_array_equal(a[i], b[i])


def test_balanced_over_all_classes() -> None:
    _, labels = render_dataset(86, seed=0)
    assert np.bincount(labels, minlength=43).tolist() == [2] * 43


def test_every_class_renders_distinct_designs() -> None:
    # same scene parameters (same rng seed), different class → the sign content differs
    imgs = np.stack([render_sign(c, np.random.default_rng(0), size=32).astype(np.float32) for c in range(43)])
    assert imgs.shape == (43, 32, 32, 3) and imgs.dtype == np.float32
    diffs = np.abs(imgs[:, None] - imgs[None]).mean(axis=(2, 3, 4))
    off_diag = diffs[~np.eye(43, dtype=bool)]
    assert off_diag.min() > 0.5  # no two classes render identically


@pytest.mark.parametrize("size", [16, 32, 64])
def test_sizes(size: int) -> None:
    img = render_sign(5, np.random.default_rng(0), size=size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8 and img.std() > 5


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="class id must be in 0..42, got 43"):
        render_sign(43, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="≥ 0"):
        render_dataset(-1)


def test_open_dataset_synth_splits_differ() -> None:
    tr = open_dataset("synth", "train", n=20)
    va = open_dataset("synth", "val", n=20)
    assert len(tr) == 20 and tr.class_names[14] == "Stop"
    assert not np.array_equal(tr.images, va.images)
    q = open_dataset("synth://?seed=9", "val", n=5)
    assert q.meta["seed"] == 9
