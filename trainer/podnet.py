"""PODNet (Douillard et al. 2020): pooled-outputs distillation and a local similarity
classifier with K proxies per class.

L = L_LSC + L_POD-final (Sec. 3.3), with
- POD-spatial (Eq. 4-5) on every stage output: width pooling (sum over W) and
  height pooling (sum over H), compared between the previous and current model;
- POD-flat (Eq. 6) on the final embedding; combined as Eq. 7 with lambda_c, lambda_f;
- LSC (Eq. 9): s_ck = softmax_k <theta_ck, h>, y_c = sum_k s_ck <theta_ck, h> (cosines);
- NCA loss (Eq. 10): [-log(exp(eta (y_y - delta)) / sum_{i != y} exp(eta y_i))]_+ with a
  learned eta, kept >= 1: the margin delta is applied to the true class only, and the
  true class is left out of the denominator, as Eq. 10 writes it;
- new-class proxies imprinted from k-means centroids of new-class features (Sec. 3.2).

Deviations (docs/methods.md): pooled POD vectors and embeddings are L2-normalised
per image before the squared distance (the raw sums of Eq. 4 grow with the map
size); the stages keep their final ReLU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from m2kd.runtime.backbones import BackboneOutput
from m2kd.runtime.engine import StepContext
from m2kd.runtime.inference import run_in_batches
from m2kd.runtime.teachers import Batch


@dataclass
class PODNetConfig:
    proxies: int = 10  # K
    lambda_c: float = 3.0  # POD-spatial weight
    lambda_f: float = 1.0  # POD-flat weight
    margin: float = 0.6  # delta
    eta_init: float = 1.0  # initial value of the learned scale
    eta_min: float = 1.0  # the scale the loss uses is max(eta, eta_min)


def pod_spatial(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Eq. 4-5 for one stage output (B, C, H, W), averaged over the batch."""
    def pooled(h):
        width = h.sum(dim=3).flatten(1)  # (B, C*H)
        height = h.sum(dim=2).flatten(1)  # (B, C*W)
        return F.normalize(torch.cat([width, height], dim=1), dim=1)

    return (pooled(old) - pooled(new)).pow(2).sum(dim=1).mean()


def pod_flat(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Eq. 6 on the (normalised) final embedding, averaged over the batch."""
    return (F.normalize(old, dim=1) - F.normalize(new, dim=1)).pow(2).sum(dim=1).mean()


def pod_final(old_stages, new_stages, old_flat, new_flat, lambda_c: float, lambda_f: float
              ) -> torch.Tensor:
    """Eq. 7: lambda_c times the mean POD-spatial over stages plus lambda_f POD-flat."""
    spatial = sum(pod_spatial(o, n) for o, n in zip(old_stages, new_stages)) / len(new_stages)
    return lambda_c * spatial + lambda_f * pod_flat(old_flat, new_flat)


def nca_loss(scores: torch.Tensor, labels: torch.Tensor, eta: torch.Tensor, margin: float
             ) -> torch.Tensor:
    """Eq. 10, averaged over the batch."""
    true = scores.gather(1, labels[:, None]).squeeze(1)
    # mask after scaling: eta * -inf would give eta a NaN gradient
    others = (eta * scores).masked_fill(F.one_hot(labels, scores.shape[1]).bool(), float("-inf"))
    log_ratio = eta * (true - margin) - torch.logsumexp(others, dim=1)
    return torch.relu(-log_ratio).mean()


class LocalSimilarityClassifier(nn.Module):
    """Eq. 9 with K proxies per class; grows by imprinting."""

    def __init__(self, dim: int, proxies: int, eta_init: float):
        super().__init__()
        self.k = proxies
        self.proxies = nn.Parameter(torch.empty(0, dim))
        self.eta = nn.Parameter(torch.tensor(float(eta_init)))

    @property
    def num_classes(self) -> int:
        return self.proxies.shape[0] // self.k

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(features, dim=1) @ F.normalize(self.proxies, dim=1).t()
        cos = cos.view(len(features), self.num_classes, self.k)
        return (torch.softmax(cos, dim=2) * cos).sum(dim=2)

    @torch.no_grad()
    def imprint(self, features: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> None:
        """New proxies = k-means centroids of each new class's normalised features."""
        new = [kmeans(F.normalize(features[labels == c], dim=1), self.k) for c in classes]
        self.proxies = nn.Parameter(torch.cat([self.proxies.data.to(features.device)] + new))


def kmeans(x: torch.Tensor, k: int, iterations: int = 20, seed: int = 0) -> torch.Tensor:
    """Plain Lloyd's k-means; with fewer points than k, points are repeated."""
    g = torch.Generator().manual_seed(seed)
    if len(x) < k:
        x = x[torch.arange(k) % len(x)]
    centroids = x[torch.randperm(len(x), generator=g)[:k].to(x.device)].clone()
    for _ in range(iterations):
        assign = torch.cdist(x, centroids).argmin(dim=1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centroids[j] = members.mean(0)
    return centroids


class PODNet:
    """Works exemplar-free, or with exemplars when the protocol adds stored images."""

    name = "podnet"
    head_only = False  # its proxies classify: no rotation classes in the base step

    def __init__(self, config: PODNetConfig | None = None, reads_old_data: bool = False,
                 name: str = "podnet"):
        self.config = config or PODNetConfig()
        self.params = asdict(self.config)
        self.reads_old_data = reads_old_data
        self.name = name
        self.lsc: LocalSimilarityClassifier | None = None

    def before_step(self, ctx: StepContext) -> None:
        if self.lsc is None:
            self.lsc = LocalSimilarityClassifier(ctx.model.feature_dim, self.config.proxies,
                                                 self.config.eta_init)
        self.lsc.to(ctx.device)
        new_classes = list(range(ctx.n_old, ctx.n_seen))
        ctx.model.eval()
        feats = run_in_batches(lambda x: ctx.model(x).features, ctx.data.images, ctx.device)
        ctx.model.train()
        self.lsc.imprint(feats.to(ctx.device), ctx.data.labels.to(ctx.device), new_classes)
        ctx.model.lsc = self.lsc  # a submodule, so the engine's optimizer trains it
        ctx.state["teacher"] = ctx.teacher_model(ctx.step - 1) if ctx.n_old else None

    def loss(self, ctx: StepContext, out: BackboneOutput, batch: Batch
             ) -> dict[str, torch.Tensor]:
        eta = self.lsc.eta.clamp(min=self.config.eta_min)
        l_lsc = nca_loss(self.lsc(out.features), batch.labels, eta, self.config.margin)
        teacher = ctx.state["teacher"]
        if teacher is None:
            return {"loss": l_lsc, "lsc": l_lsc}
        with torch.no_grad():
            old = teacher(batch.images)
        l_pod = pod_final(old.stages, out.stages, old.features, out.features,
                          self.config.lambda_c, self.config.lambda_f)
        return {"loss": l_lsc + l_pod, "lsc": l_lsc, "pod": l_pod}

    def after_step(self, ctx: StepContext) -> None:
        del ctx.model.lsc
        ctx.state.pop("teacher", None)

    def scores(self, model: nn.Module, images: torch.Tensor, device) -> torch.Tensor:
        """CNN inference: LSC class similarities of the step's model."""
        model.eval()
        return run_in_batches(lambda x: self.lsc(model(x).features), images, device)
