from pathlib import Path

import pytest
import torch
from torch import nn

import edgepure
from edgepure.models.registry import load_weights_file
from edgepure.runtime.errors import ModelError


@pytest.mark.parametrize("name", ["signnet_xs", "signnet_s", "signnet_cifar"])
def test_create_and_forward(name: str) -> None:
    m = edgepure.create_classifier(name).eval()
    x = torch.rand(2, 3, 32, 32)
    y = m(x)
    assert y.shape == (2, m.num_classes)
    assert not any(isinstance(mod, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) for mod in m.modules())


def test_normalisation_lives_in_the_model() -> None:
    m = edgepure.create_classifier("signnet_xs")
    assert "mean" in dict(m.named_buffers()) and "std" in dict(m.named_buffers())


def test_registry_listing_and_unknown_name() -> None:
    names = edgepure.list_classifiers()
    assert {"signnet_s", "signnet_xs", "signnet_cifar"} <= set(names)
    with pytest.raises(ModelError, match="unknown classifier 'resnet9000'.*registered: "):
        edgepure.create_classifier("resnet9000")


def test_pretrained_without_weights() -> None:
    with pytest.raises(ModelError, match="'signnet_xs' has no shipped weights"):
        edgepure.create_classifier("signnet_xs", pretrained=True)


def test_weights_mismatch_and_corrupt_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    small = edgepure.create_classifier("signnet_xs")
    save_file(dict(small.state_dict()), str(tmp_path / "xs.safetensors"))
    with pytest.raises(ModelError, match="has shape .* the model expects"):
        load_weights_file(edgepure.create_classifier("signnet_s"), tmp_path / "xs.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ModelError, match="junk.safetensors: not a readable safetensors"):
        load_weights_file(small, tmp_path / "junk.safetensors")
    with pytest.raises(ModelError, match="weight file not found"):
        load_weights_file(small, tmp_path / "none.safetensors")
