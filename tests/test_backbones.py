"""Every backbone honours the one contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from m2kd.runtime.backbones import BACKBONES, create_backbone, masked_parameter_names
from m2kd.runtime.errors import ConfigError

SIZES = {"resnet18": 32, "resnet_small": 8}


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("channels", [1, 3])
def test_backbone_contract(name, channels):
    model = create_backbone(name, num_classes=5, in_channels=channels).eval()
    size = SIZES.get(name, 32)
    out = model(torch.randn(2, channels, size, size))
    assert out.logits.shape == (2, 5) and out.aux_logits.shape == (2, 5)
    assert out.features.shape == (2, model.feature_dim)
    assert len(out.stages) == len(BACKBONES[name].widths)
    assert out.stages[1].shape[1] == model.aux_dim
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(masked_parameter_names(model)) == len(convs)


def test_add_classes_keeps_old_rows():
    model = create_backbone("resnet_small", 2, 1)
    before = model.head.weight.detach().clone()
    model.add_classes(3)
    assert model.num_classes == 5 and model.aux_head.out_features == 5
    assert torch.equal(model.head.weight[:2], before)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ConfigError, match="resnet32"):
        create_backbone("vgg", 2)
