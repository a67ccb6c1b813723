import numpy as np
import pytest

from edgepure.runtime.errors import ConfigError
from edgepure.runtime.preprocess import crop_roi, resize, resize_matrix, scale_roi, to_chw_float


@pytest.mark.parametrize(("n_in", "n_out"), [(32, 32), (100, 32), (32, 100), (7, 3), (3, 7)])
def test_resize_matrix_rows_sum_to_one(n_in: int, n_out: int) -> None:
    m = resize_matrix(n_in, n_out)
    assert m.shape == (n_out, n_in)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
    assert (m >= 0).all()


def test_constant_stays_constant() -> None:
    img = np.full((50, 70, 3), 123, np.uint8)
    out = resize(img, (32, 32))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert (out == 123).all()


def test_downscale_is_antialiased() -> None:
    # a one-pixel checkerboard averages to grey, not to an aliased pattern
    yy, xx = np.mgrid[:128, :128]
    img = np.repeat((((yy + xx) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    out = resize(img, (32, 32)).astype(int)
    assert abs(out.mean() - 127.5) < 2 and out.std() < 3


def test_identity_and_upscale_ramp() -> None:
    ramp = np.tile(np.linspace(0, 255, 8, dtype=np.float32)[None, :, None], (4, 1, 3))
    np.testing.assert_array_equal(resize(ramp, (4, 8)), ramp)
    up = resize(ramp, (4, 16))
    assert np.all(np.diff(up[0, :, 0]) >= -1e-4)  # monotone


def test_bad_shape() -> None:
    with pytest.raises(ConfigError, match="H×W×C"):
        resize(np.zeros((4, 4)), (2, 2))


def test_roi_scaling_and_crop() -> None:
    assert scale_roi((10, 8, 72, 70), (84, 80), (42, 40)) == (5.0, 4.0, 36.0, 35.0)
    img = np.zeros((40, 42, 3), np.uint8)
    crop = crop_roi(img, (5.0, 4.0, 36.0, 35.0))
    assert crop.shape == (32, 32, 3)
    assert crop_roi(img, (-5, -5, 100, 100)).shape == (40, 42, 3)


def test_to_chw_float() -> None:
    x = to_chw_float(np.full((2, 3, 3), 255, np.uint8))
    assert x.shape == (3, 2, 3) and x.dtype == np.float32 and float(x.max()) == 1.0
