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


def test_channels_last_training_keeps_the_gradient_channels_last_through_stage_2():
    """Stage 2 gets gradients from stage 3 and the auxiliary head; their sum must stay
    channels-last, or stages 1-2 run their backward in the slow layout on the CPU."""
    model = create_backbone("resnet_small", 4, 1).train().to(memory_format=torch.channels_last)
    images = torch.randn(8, 1, 16, 16).contiguous(memory_format=torch.channels_last)
    out = model(images)
    seen = []
    out.stages[1].register_hook(lambda g: seen.append(g))
    (out.logits.sum() + out.aux_logits.sum()).backward()
    # Hooks run in the order they were registered: the model's own (the layout fix) first.
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    conv = model.stages[1][0].conv1.weight.grad
    assert conv is not None and torch.isfinite(conv).all()
