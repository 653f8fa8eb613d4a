"""Maskable ResNet backbones behind one factory, `create_backbone(name, ...)`.

Every backbone honours one contract: `forward(x)` returns a `BackboneOutput`
with the logits, the pooled feature, each stage's output (PODNet reads them)
and the auxiliary head's logits on the pooled output of stage 2 (M2KD Eq. 3).

"Maskable" means: every conv weight is a prunable parameter with an owner mask
(kept by the bundle and the engine, see `masked_parameter_names`), and every
other parameter (BatchNorm, heads) is per step. The module itself is always
the plain model of one step, so it exports and runs like any ResNet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError


@dataclass(frozen=True)
class ResNetConfig:
    stem: str  # "cifar": 3x3 conv; "imagenet": 7x7/2 conv + 3x3/2 max-pool
    widths: tuple[int, ...]
    blocks: tuple[int, ...]
    strides: tuple[int, ...]


BACKBONES: dict[str, ResNetConfig] = {
    # He et al. 2016, CIFAR variants (3 stages, 6n+2 layers) as used by iCaRL/M2KD/PODNet.
    "resnet20": ResNetConfig("cifar", (16, 32, 64), (3, 3, 3), (1, 2, 2)),
    "resnet32": ResNetConfig("cifar", (16, 32, 64), (5, 5, 5), (1, 2, 2)),
    "resnet56": ResNetConfig("cifar", (16, 32, 64), (9, 9, 9), (1, 2, 2)),
    # ImageNet-style ResNet-18 (M2KD's iILSVRC-small backbone).
    "resnet18": ResNetConfig("imagenet", (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2)),
    # A small ResNet (8 layers) for 28x28 MNIST and 8x8 scikit-learn digits.
    "resnet_small": ResNetConfig("cifar", (16, 32, 64), (1, 1, 1), (1, 2, 2)),
}


@dataclass
class BackboneOutput:
    logits: torch.Tensor  # (N, classes)
    features: torch.Tensor  # (N, feature_dim), pooled output of the last stage
    stages: list[torch.Tensor]  # each stage's output, (N, C_s, H_s, W_s)
    aux_logits: torch.Tensor  # (N, classes), auxiliary head on pooled stage 2


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _stem(kind: str, in_channels: int, width: int) -> nn.Sequential:
    if kind == "cifar":
        conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU())
    conv = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1))


class ResNet(nn.Module):
    """A ResNet whose heads grow by rows as classes are added."""

    def __init__(self, config: ResNetConfig, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.stem = _stem(config.stem, in_channels, config.widths[0])
        stages, ch = [], config.widths[0]
        for width, n_blocks, stride in zip(config.widths, config.blocks, config.strides):
            blocks = [BasicBlock(ch if i == 0 else width, width, stride if i == 0 else 1)
                      for i in range(n_blocks)]
            stages.append(nn.Sequential(*blocks))
            ch = width
        self.stages = nn.ModuleList(stages)
        self.feature_dim = config.widths[-1]
        self.aux_dim = config.widths[1]
        self.head = nn.Linear(self.feature_dim, num_classes)
        self.aux_head = nn.Linear(self.aux_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        h = self.stem(x)
        stages = []
        for stage in self.stages:
            h = stage(h)
            stages.append(h)
        features = h.mean(dim=(2, 3))
        if self.training:
            keep_gradient_layout(stages[1])
        aux_features = stages[1].mean(dim=(2, 3))
        return BackboneOutput(self.head(features), features, stages, self.aux_head(aux_features))

    def add_classes(self, n_new: int) -> None:
        """Append `n_new` freshly initialised rows to the head and the auxiliary head."""
        self.head = _resized_linear(self.head, self.head.out_features + n_new)
        self.aux_head = _resized_linear(self.aux_head, self.aux_head.out_features + n_new)

    def keep_classes(self, n: int) -> None:
        """Cut the head and the auxiliary head down to their first `n` rows."""
        self.head = _resized_linear(self.head, n)
        self.aux_head = _resized_linear(self.aux_head, n)


def keep_gradient_layout(h: torch.Tensor) -> None:
    """Make the gradient that flows back into `h` channels-last when `h` is.

    Stage 2's output feeds stage 3 and the auxiliary head. Autograd sums the two
    gradients; the pooling's arrives first, as an NCHW-strided expansion, and the sum
    keeps that layout, so every convolution of stages 1-2 then ran its backward in the
    slow layout: 4 % of an M2KD step on the CPU (`benchmarks/step_phases.py`)."""
    channels_last = h.dim() == 4 and h.is_contiguous(memory_format=torch.channels_last) \
        and not h.is_contiguous()
    if channels_last and h.requires_grad:
        h.register_hook(lambda g: g.contiguous(memory_format=torch.channels_last))


def _resized_linear(old: nn.Linear, n_out: int) -> nn.Linear:
    """`old` with `n_out` rows: its first rows kept, any new ones freshly initialised."""
    new = nn.Linear(old.in_features, n_out).to(old.weight.device)
    kept = min(n_out, old.out_features)
    with torch.no_grad():
        new.weight[:kept] = old.weight[:kept]
        new.bias[:kept] = old.bias[:kept]
    return new


def check_backbone(name: str) -> None:
    """Refuse a name that is not in the registry; the error lists the valid names."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def create_backbone(name: str, num_classes: int, in_channels: int = 3) -> ResNet:
    """Build a backbone from the registry."""
    check_backbone(name)
    if in_channels < 1 or num_classes < 0:
        raise ConfigError("in_channels must be >= 1 and num_classes >= 0")
    return ResNet(BACKBONES[name], num_classes, in_channels)


def masked_parameter_names(model: nn.Module) -> list[str]:
    """Names of the prunable parameters: every conv weight, in module order."""
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def batchnorm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """BatchNorm parameters and running statistics (the per-step part of the backbone)."""
    state = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            for stat in ("weight", "bias", "running_mean", "running_var"):
                state[f"{name}.{stat}"] = getattr(m, stat).detach().clone()
    return state
