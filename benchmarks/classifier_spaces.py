"""Which snapshot's feature space should the statistics classifier use? Measured.

Trains (or reuses) an M2KD bundle per seed, then scores the test images of every seen
class after each step with FeCAM built from class statistics in different spaces:

- base:      every class's statistics in snapshot 1 (exact, never stale);
- transport: each class's statistics in its birth snapshot, moved to the last snapshot
             by a ridge map fitted on the current step's images (no chain of estimates);
- base+transport: the sum of both scores;
- own:       each class scored in its birth snapshot with its exact statistics there
             (no transport; scores of different classes come from different spaces);
- oracle:    statistics of every class recomputed in the last snapshot from its own
             images (NOT exemplar-free: the ceiling if statistics never went stale);
- lda:       linear discriminant (shared shrunk covariance) on base-space statistics;
- pseudo:    softmax head fitted on balanced Gaussian pseudo-features of base-space statistics;
- base+lda:  FeCAM base scores + LDA log-odds;
- pseudo+base: log-softmax of the pseudo head + log-softmax of the base-space FeCAM
             scores (one forward pass at any step);
- pseudo+own: log-softmax of the pseudo head + log-softmax of the own-space FeCAM scores;
- head:      the bundle's sigmoid head;
- stats-base, stats: the product's classifiers of those two forms, as inference runs
             them (runtime/classifier.py: stored statistics, FeCAM's distance unit set
             by the base classes), so their rows are what `m2kd predict` would score.

    python benchmarks/classifier_spaces.py --dataset mnist5k --base-classes 2 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from m2kd.runtime.bundle import load_bundle
from m2kd.runtime.class_stats import ClassStats, pack, pooled_features, statistics_of, tukey
from m2kd.runtime.classifier import scorer_of_step, with_classifier
from m2kd.runtime.engine import StepConfig
from m2kd.runtime.linear_from_stats import LinearOnStats, lda_head, pseudo_feature_head
from m2kd.runtime.reconstruct import model_of_step
from m2kd.runtime.stats_classifier import FeCAM
from m2kd.trainer.datasets import load_dataset
from m2kd.trainer.orders import named_order
from m2kd.trainer.protocol import Protocol, run_protocol

VARIANTS = ("base", "own", "base+own", "transport", "base+transport", "lda", "pseudo",
            "base+lda", "pseudo+base", "pseudo+own", "oracle", "head", "stats-base", "stats")
PRODUCT_CLASSIFIERS = ("stats-base", "stats")


def ridge_map(source: torch.Tensor, target: torch.Tensor, lam: float = 1e-2) -> torch.Tensor:
    """W (D+1, D) minimising |[source, 1] W - target|^2 + lam * n * |W|^2."""
    x = torch.cat([source, torch.ones(len(source), 1, dtype=source.dtype)], 1)
    gram = x.T @ x + lam * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    return torch.linalg.solve(gram, x.T @ target)


def transported(stats: ClassStats, w: torch.Tensor, residual: torch.Tensor) -> ClassStats:
    a, b = w[:-1].T.double(), w[-1].double()
    mean = stats.mean.double() @ a.T + b
    cov = a @ stats.covariances().double() @ a.T + residual
    return ClassStats(stats.count, mean.float(), pack(cov).float())


def evaluate(bundle, data, order, steps) -> dict[str, list[float]]:
    k_last = len(steps)
    head_index = {c: i for i, c in enumerate(order)}
    models = [model_of_step(bundle, j) for j in range(1, k_last + 1)]
    train_feats = [pooled_features(m, data.train_images, "cpu") for m in models]
    test_feats = [pooled_features(m, data.test_images, "cpu") for m in models]
    ytr = torch.tensor([head_index[int(c)] for c in data.train_labels])
    yte = torch.tensor([head_index[int(c)] for c in data.test_labels])
    born = [k for k, cls in enumerate(steps) for _ in cls]  # 0-based birth step per head idx
    out = {v: [] for v in VARIANTS}
    for k in range(k_last):
        seen = list(range(sum(len(s) for s in steps[:k + 1])))
        test = torch.isin(yte, torch.tensor(seen))
        y = yte[test]

        def acc(scores, y=y):
            return float((scores.argmax(1) == y).float().mean())

        base_stats = statistics_of(train_feats[0].double(), ytr, seen)
        s_base = FeCAM(base_stats, 0.5)(test_feats[0][test])
        out["base"].append(acc(s_base))
        s_lda = LinearOnStats(*lda_head(base_stats), 0.5)(test_feats[0][test])
        out["lda"].append(acc(s_lda))
        out["base+lda"].append(acc(s_base + s_lda.log_softmax(1)))
        pseudo = LinearOnStats(*pseudo_feature_head(base_stats), 0.5)
        s_pseudo = pseudo(test_feats[0][test])
        out["pseudo"].append(acc(s_pseudo))
        # both terms in the base snapshot: one forward pass at any step
        out["pseudo+base"].append(acc(s_pseudo.log_softmax(1) + s_base.log_softmax(1)))
        # transport: birth-space statistics moved to snapshot k by a map fitted on step k's images
        new = torch.isin(ytr, torch.tensor([head_index[c] for c in steps[k]]))
        parts = []
        for c in seen:
            s = born[c]
            stats = statistics_of(train_feats[s].double(), ytr, [c])
            if s < k:
                src = tukey(train_feats[s][new].double())
                dst = tukey(train_feats[k][new].double())
                w = ridge_map(src, dst)
                res = dst - torch.cat([src, torch.ones(len(src), 1, dtype=src.dtype)], 1) @ w
                stats = transported(stats, w, torch.cov(res.T))
            parts.append(stats)
        s_own = torch.zeros_like(s_base)
        for s in range(k + 1):
            cls = [c for c in seen if born[c] == s]
            fecam = FeCAM(statistics_of(train_feats[s].double(), ytr, cls), 0.5)
            s_own[:, cls] = fecam(test_feats[s][test])
        out["own"].append(acc(s_own))
        out["base+own"].append(acc(s_base + s_own))
        out["pseudo+own"].append(acc(s_pseudo.log_softmax(1) + s_own.log_softmax(1)))
        s_tr = FeCAM(ClassStats.concat(parts), 0.5)(test_feats[k][test])
        out["transport"].append(acc(s_tr))
        out["base+transport"].append(acc(s_base + s_tr))
        oracle = statistics_of(train_feats[k].double(), ytr, seen)
        out["oracle"].append(acc(FeCAM(oracle, 0.5)(test_feats[k][test])))
        with torch.no_grad():
            logits = models[k](data.test_images[test]).logits
        out["head"].append(acc(logits))
        for name in PRODUCT_CLASSIFIERS:
            scorer = scorer_of_step(with_classifier(bundle, name), k + 1)
            with torch.no_grad():
                out[name].append(acc(scorer(data.test_images[test])))
    return out


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--base-classes", type=int, default=2)
    p.add_argument("--increment", type=int, default=2)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--method", default="m2kd")
    p.add_argument("--out", default="runs/classifier_spaces")
    p.add_argument("--train-per-class", type=int, help="as the bench presets subsample")
    p.add_argument("--bundles", help="reuse bench bundles: DIR/seed<N>/bundle.safetensors")
    args = p.parse_args()
    torch.set_num_threads(2)
    finals: dict[str, list[float]] = {v: [] for v in VARIANTS}
    avgs: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for seed in [int(s) for s in args.seeds.split(",")]:
        data = load_dataset(args.dataset, seed=seed, train_per_class=args.train_per_class)
        order = named_order(f"seed:{seed}", data.num_classes)
        protocol = Protocol(args.base_classes, args.increment, order)
        run_dir = Path(args.out) / f"{args.dataset}-b{args.base_classes}-{args.method}-s{seed}"
        if args.bundles:
            run_dir = Path(args.bundles) / f"seed{seed}"
        if not (run_dir / "bundle.safetensors").is_file():
            cfg = StepConfig(seed=seed, augment="none", device="cpu", progress=False)
            run_protocol(data, protocol, args.method, cfg, run_dir, log=lambda s: None)
        bundle = load_bundle(run_dir / "bundle.safetensors")
        res = evaluate(bundle, data, order, protocol.steps())
        print(f"seed {seed} order {order}: " + ", ".join(
            f"{v} {100 * r[-1]:.1f}" for v, r in res.items()), flush=True)
        for v, r in res.items():
            finals[v].append(r[-1])
            avgs[v].append(sum(r) / len(r))
    print(f"{'variant':<16} final top-1     avg. incremental")
    for v in VARIANTS:
        f, a = finals[v], avgs[v]
        print(f"{v:<16} {100 * statistics.fmean(f):5.1f} ± {100 * _sd(f):4.1f}    "
              f"{100 * statistics.fmean(a):5.1f} ± {100 * _sd(a):4.1f}")


if __name__ == "__main__":
    main()
