"""Folding every BatchNorm into the convolution before it, for inference.

In eval mode a BatchNorm is an affine map per channel, so
`W' = W * g / sqrt(v + eps)` and `b' = beta - m * g / sqrt(v + eps)` give the same
outputs as conv + BatchNorm up to float rounding (about 1e-6 here), with one op
fewer per layer. The torch runtime and both ONNX graphs serve folded models; the
probes check the unfolded reconstruction, which is what the bundle defines.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import ResNet


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                       conv.padding, bias=True, device=conv.weight.device,
                       dtype=conv.weight.dtype)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        folded.bias.copy_(bn.bias - bn.running_mean * scale)
    return folded


@torch.no_grad()
def fold_batchnorm(model: ResNet) -> ResNet:
    """In place: every conv absorbs the BatchNorm that follows it (eval-mode statistics)."""
    model.stem[0] = _fold(model.stem[0], model.stem[1])
    model.stem[1] = nn.Identity()
    for stage in model.stages:
        for block in stage:
            block.conv1, block.bn1 = _fold(block.conv1, block.bn1), nn.Identity()
            block.conv2, block.bn2 = _fold(block.conv2, block.bn2), nn.Identity()
            if len(block.shortcut):
                block.shortcut[0] = _fold(block.shortcut[0], block.shortcut[1])
                block.shortcut[1] = nn.Identity()
    return model.eval()
