"""torch modules whose ONNX export rebuilds a step of a bundle.

- `StepGraph`: the model of one step with every BatchNorm folded into its conv
  (`W' = W * g / sqrt(v + eps)`, `b' = beta - m * g / sqrt(v + eps)`).
- `AllStepsGraph`: the shared weights, the owner masks and the per-step
  BatchNorm and heads stacked along a step axis, all as initializers; the
  `step` input (int64, shape [1]) selects `W * (1 <= M <= step)` and step's
  parameters at run time, so the file is about the bundle's size, not K models.

Both output `logits` and `probabilities` (softmax). With `preprocess` the graph
takes uint8 NHWC images of the bundle's HxW and normalises them itself.
The logits are those of the bundle's classifier (runtime/classifier.py): the step's
head, or FeCAM on the features of the snapshots the classifier reads, built from the
stored class statistics (a quadratic form: MatMul, Mul, ReduceSum). The all-steps graph
scores every class of the bundle (a class's score does not depend on the step) and pads
the classes a step does not know with -inf.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2kd.runtime.backbones import BasicBlock
from m2kd.runtime.bundle import Bundle
from m2kd.runtime.class_stats import of_pooled_stages, statistics_features, tukey
from m2kd.runtime.fold_batchnorm import fold_batchnorm
from m2kd.runtime.classifier import LINEAR_KINDS, base_classifier, build_classifier, combine, \
    feature_steps, fecam_term
from m2kd.runtime.reconstruct import check_step, model_of_step

BN_EPS = 1e-5


class Preprocess(nn.Module):
    """uint8 (N, H, W, C) -> normalised float (N, C, H, W)."""

    def __init__(self, mean, std, dtype=torch.float32):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=dtype).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=dtype).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).to(self.mean.dtype) / 255.0
        return (x - self.mean) / self.std


class StepGraph(nn.Module):
    def __init__(self, bundle: Bundle, step: int, preprocess: bool = False, fp16: bool = False):
        super().__init__()
        dtype = torch.float16 if fp16 else torch.float32
        check_step(bundle, step)
        self.models = nn.ModuleList(fold_batchnorm(model_of_step(bundle, j)).to(dtype)
                                    for j in feature_steps(bundle, step))
        self.classifier = build_classifier(bundle, step)  # fp32: distances need the range
        self.stats_features = bundle.statistics_features
        spec = bundle.input_spec
        self.pre = Preprocess(spec.mean, spec.std, dtype) if preprocess else None
        self.dtype = dtype

    def forward(self, x: torch.Tensor):
        x = self.pre(x) if self.pre is not None else x.to(self.dtype)
        if self.classifier is None:
            logits = self.models[0](x).logits.float()
        else:
            logits = self.classifier([statistics_features(m(x), self.stats_features).float()
                                      for m in self.models])
        return logits, torch.softmax(logits, dim=1)


def _stacked_linear_heads(bundle: Bundle, n_max: int):
    """(beta, W (K, n_max, D), b (K, n_max)) of each step's statistics-fitted linear head;
    a step's unknown classes get weight 0 and bias -inf."""
    heads = [base_classifier(bundle, k) for k in range(1, bundle.num_steps + 1)]
    weight = torch.zeros(bundle.num_steps, n_max, heads[0].weight.shape[1])
    bias = torch.full((bundle.num_steps, n_max), float("-inf"))
    for k, head in enumerate(heads):
        weight[k, :len(head.bias)] = head.weight
        bias[k, :len(head.bias)] = head.bias
    return heads[0].beta, weight, bias


class AllStepsGraph(nn.Module):
    """Every step in one graph; `step` picks the model at run time.

    Padding: logits of classes a step does not know are -inf (probability 0); the
    `valid` output marks the real classes. An invalid step makes the graph's
    Gather fail (index out of range) instead of wrapping around.
    """

    def __init__(self, bundle: Bundle, preprocess: bool = False):
        super().__init__()
        self.template = model_of_step(bundle, 1)  # structure only: strides, paddings
        self.num_steps = bundle.num_steps
        n_max = len(bundle.classes)
        for name, w in bundle.weights.items():
            key = name.replace(".", "_")
            self.register_buffer(f"w_{key}", w.clone())
            self.register_buffer(f"m_{key}", bundle.masks[name].clone())
        for bn in bundle.steps[0].batchnorm:
            stacked = torch.stack([rec.batchnorm[bn] for rec in bundle.steps])
            self.register_buffer(f"bn_{bn.replace('.', '_')}", stacked)
        head_w = torch.zeros(self.num_steps, n_max, self.template.feature_dim)
        head_b = torch.full((self.num_steps, n_max), float("-inf"))
        for k, rec in enumerate(bundle.steps):
            n = rec.head["weight"].shape[0]
            head_w[k, :n] = rec.head["weight"]
            head_b[k, :n] = rec.head["bias"]
        self.register_buffer("head_w", head_w)
        self.register_buffer("head_b", head_b)
        # A statistics classifier scores every class of the bundle; a step's unknown
        # classes get -inf from `class_pad`, as the head's padding does. FeCAM scores do
        # not depend on the step: one classifier serves all. A linear head fitted on
        # statistics (LDA, pseudo-features) depends on the set of classes: one per step,
        # stacked and padded like the heads, plus the step-independent FeCAM term.
        spec = bundle.classifier
        self.feature_steps = [] if spec.get("kind") == "head" \
            else feature_steps(bundle, bundle.num_steps)
        self.stats_features = bundle.statistics_features
        self.classifier = build_classifier(bundle, bundle.num_steps) \
            if spec.get("kind") == "fecam" else None
        self.linear = spec.get("kind") in LINEAR_KINDS
        self.own = fecam_term(bundle, bundle.num_steps) if self.linear else None
        if self.linear:
            self.beta, lin_w, lin_b = _stacked_linear_heads(bundle, n_max)
            self.register_buffer("lin_w", lin_w)
            self.register_buffer("lin_b", lin_b)
        pad = torch.where(torch.isfinite(head_b), 0.0, float("-inf"))
        self.register_buffer("class_pad", pad)
        spec = bundle.input_spec
        self.pre = Preprocess(spec.mean, spec.std) if preprocess else None

    def _index(self, step: torch.Tensor) -> torch.Tensor:
        # step - 1 for 1..K; anything else becomes K, out of range for every Gather below.
        ok = (step >= 1) & (step <= self.num_steps)
        return torch.where(ok, step - 1, torch.full_like(step, self.num_steps))

    def _conv_bn(self, x, conv_name: str, bn_name: str, conv: nn.Conv2d, step, idx):
        key = conv_name.replace(".", "_")
        mask = getattr(self, f"m_{key}")
        weight = getattr(self, f"w_{key}") * ((mask >= 1) & (mask.to(torch.int64) <= step)).float()
        stats = {s: getattr(self, f"bn_{bn_name.replace('.', '_')}_{s}").index_select(0, idx)[0]
                 for s in ("weight", "bias", "running_mean", "running_var")}
        scale = stats["weight"] / torch.sqrt(stats["running_var"] + BN_EPS)
        bias = stats["bias"] - stats["running_mean"] * scale
        return F.conv2d(x, weight * scale.view(-1, 1, 1, 1), bias, conv.stride, conv.padding)

    def _block(self, x, prefix: str, block: BasicBlock, step, idx):
        out = torch.relu(self._conv_bn(x, f"{prefix}.conv1.weight", f"{prefix}.bn1",
                                       block.conv1, step, idx))
        out = self._conv_bn(out, f"{prefix}.conv2.weight", f"{prefix}.bn2", block.conv2,
                            step, idx)
        if len(block.shortcut):
            x = self._conv_bn(x, f"{prefix}.shortcut.0.weight", f"{prefix}.shortcut.1",
                              block.shortcut[0], step, idx)
        return torch.relu(out + x)

    def forward(self, x: torch.Tensor, step: torch.Tensor):
        x = self.pre(x) if self.pre is not None else x
        idx = self._index(step)
        pad = self.class_pad.index_select(0, idx)[0]
        # statistics classifiers read fixed snapshots; the step picks the classes
        features = [self._features(x, torch.full_like(step, j), torch.full_like(idx, j - 1),
                                   self.stats_features) for j in self.feature_steps]
        if self.linear:
            bias = self.lin_b.index_select(0, idx)[0]
            logits = tukey(features[0], self.beta) @ self.lin_w.index_select(0, idx)[0].t() + bias
            if self.own is not None:
                logits = combine(logits, self.own(features) + pad, as_log_probs=True)
            return logits, torch.softmax(logits, dim=1), torch.isfinite(pad)
        if self.classifier is not None:  # FeCAM
            logits = self.classifier(features) + pad
            return logits, torch.softmax(logits, dim=1), torch.isfinite(pad)
        features = self._features(x, step, idx)
        weight = self.head_w.index_select(0, idx)[0]
        bias = self.head_b.index_select(0, idx)[0]
        logits = features @ weight.t() + bias
        valid = torch.isfinite(bias)
        return logits, torch.softmax(logits, dim=1), valid

    def _features(self, x: torch.Tensor, step: torch.Tensor, idx: torch.Tensor,
                  kind: str = "last"):
        """Pooled features of the step's model: `statistics_features` of `kind`."""
        t = self.template
        h = torch.relu(self._conv_bn(x, "stem.0.weight", "stem.1", t.stem[0], step, idx))
        if len(t.stem) > 3:
            h = t.stem[3](h)
        pooled = []
        for s, stage in enumerate(t.stages):
            for b, block in enumerate(stage):
                h = self._block(h, f"stages.{s}.{b}", block, step, idx)
            pooled.append(h.mean(dim=(2, 3)))
        return of_pooled_stages(pooled, kind)
