import pytest
import torch

import edgepure
from edgepure.runtime.errors import ConfigError, ModelError


def _x() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["gaussian", "median", "bitdepth"])
def test_baselines_keep_shape_and_range(name: str) -> None:
    p = edgepure.create_purifier(name)
    y = p(_x())
    assert y.shape == (2, 3, 32, 32) and y.min() >= 0 and y.max() <= 1
    assert name in edgepure.list_purifiers()


def test_baselines_do_what_they_say() -> None:
    x = _x()
    assert edgepure.create_purifier("gaussian", sigma=1.0)(x).std() < x.std()
    q = edgepure.create_purifier("bitdepth", bits=2)(x)
    assert set(torch.unique(q * 3).round().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    spike = torch.zeros(1, 3, 9, 9)
    spike[..., 4, 4] = 1.0  # an isolated bright pixel is removed by the median
    assert edgepure.create_purifier("median")(spike).max() == 0


def test_stochastic_purifier_is_deterministic_given_noise() -> None:
    p = edgepure.create_purifier("gaussian", noise_std=0.1)
    x = _x()
    n1 = p.sample_noise(x, torch.Generator().manual_seed(1))
    n2 = p.sample_noise(x, torch.Generator().manual_seed(1))
    assert torch.equal(p(x, n1), p(x, n2))
    assert not torch.equal(p(x, n1), p(x, p.sample_noise(x, torch.Generator().manual_seed(2))))
    assert edgepure.create_purifier("median").sample_noise(x) is None


def test_registry_errors() -> None:
    with pytest.raises(ModelError, match="unknown purifier 'magic'"):
        edgepure.create_purifier("magic")
    with pytest.raises(ConfigError, match="purifier 'median'"):
        edgepure.create_purifier("median", radius=2)
    with pytest.raises(ConfigError, match="bits must be in 1..8"):
        edgepure.create_purifier("bitdepth", bits=0)
