"""The update engine: one function runs one incremental step for any method.

It alone owns the optimizer, the epochs, the logging and the freezing of owned
weights (invariant 1). A method plugs in with at most three hooks: `before_step`
(build teachers, ...), `loss` (named parts plus "loss") and `after_step`.

One step (M2KD Algorithm 1): train the free weights, then, if pruning is on,
keep the top `1 - ratio` of the free weights by magnitude for this step, zero
the rest, and fine-tune the kept ones (the last fifth of the step's epochs; the
paper: another half after them).
The step's BatchNorm and heads start from the previous step's and are stored per step.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from .augment_option import AUGMENTATIONS, SHIFT_PIXELS
from .base_rotations import rotation_names, with_rotations
from .backbones import BackboneOutput, ResNet, batchnorm_state, create_backbone, \
    masked_parameter_names
from .bundle import MAX_STEPS, Bundle, InputSpec, StepRecord, make_probe_input
from .devices import fast_memory_format, resolve_device
from .distributed import all_reduce_sum, broadcast_buffers, check_identical, shard_indices, \
    wrap, world
from .errors import ConfigError, DataError, InvariantError
from .class_stats import STATS_FEATURES, ClassStats, Moments, last_stage, moments_of, \
    pooled_features
from .classifier import CLASSIFIERS, classifier_config
from .inference import run_in_batches
from .losses import REDUCTIONS
from .owner_masks import PruneStats, empty_masks, prune_free_weights
from .reconstruct import model_of_step
from .step_precision import round_in_place, round_private_tensors
from .teachers import Batch, apply_view, shift_images


@dataclass
class StepConfig:
    """Hyper-parameters of one step. Defaults are the recipe measured to train here
    (docs/methods.md, "The recipe"); `RECIPES["paper"]` is M2KD Section 4.2's."""

    epochs: int = 15
    lr: float = 0.1
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4  # step 1 ...
    later_weight_decay: float = 5e-4  # ... and later steps (the paper: 0); free weights only
    schedule: str = "cosine"  # "cosine" (to 0 over the phase) or "step" (milestones, gamma)
    lr_milestones: tuple[float, ...] = (0.5,)  # fractions of the phase's epochs ("step")
    lr_gamma: float = 0.2  # "decays by a factor of 5"
    loss_reduction: str = "batch"  # BCE / N as Eq. 1-3 write it; "mean": / (N * C)
    # None: a non-packing method (FT, LwF-MC, ...): every weight trains in every step and
    # earlier steps cannot be rebuilt from the bundle (their teachers are kept in memory).
    prune_ratio: float | None = 0.75
    # Epochs after pruning: `finetune_epochs`, or else `finetune_share` of `epochs` (at
    # least 1). The paper fine-tunes for half the epochs (0.5, `RECIPES["paper"]`); a fifth
    # measured the same accuracy at 18 / 22 of the cost (docs/methods.md, M2KD deviations).
    finetune_epochs: int | None = None
    finetune_share: float = 0.2
    # True: the fine-tune's epochs come out of `epochs` (12 + 3 of 15), so a packing step
    # reads its images as often as any other method's; False: they follow (15 + 3; the
    # paper's 80 + 40, `RECIPES["paper"]`). Level on the on-device protocols, about a
    # point lower on MNIST B2 (docs/methods.md, M2KD deviations).
    finetune_inside: bool = True
    augment: str = "flip"  # runtime/augment_option.py: "flip", "shift" or "none"
    # The base step's augmentation and epochs (None: `augment`, `epochs`). The base step is
    # trained before the model ships, where longer training costs the device nothing; the
    # default classifier reads the base snapshot only, so this is where it pays
    # (Fashion-MNIST: shifts and 30 epochs in the base step only; docs/methods.md).
    base_augment: str | None = None
    base_epochs: int | None = None
    # The base step also learns every class turned by 90, 180 and 270 degrees as three
    # extra classes, dropped when the step ends (runtime/base_rotations.py; PASS).
    base_rotations: bool = True
    # With augment "shift": the distilling teachers score the shifted image the student
    # sees (True; runtime/teachers.py), or the image unshifted (False: sessions 9-10).
    teachers_see_shift: bool = True
    # "cache" (once per step) or "live" (per batch); shifted images the teachers see are
    # always scored live (`live_teachers`).
    teacher_mode: str = "cache"
    # How the bundle classifies (runtime/classifier.py): "stats-base" (from the class
    # statistics in the base snapshot: one forward pass), "stats" (base + each class's own
    # snapshot), the other statistics classifiers, or "head" (the paper's sigmoid head).
    # Statistics are stored either way.
    classifier: str = "stats-base"
    # The features class statistics describe (runtime/class_stats.py): "stages" (every
    # stage's pooled output) or "last" (the head's input). Only a base step reads it: a
    # bundle keeps the kind its base step chose (`Bundle.stats_features`).
    stats_features: str = STATS_FEATURES[0]
    device: str = "auto"
    # bf16 autocast of the forward pass and losses on CUDA ("auto": when the GPU supports
    # bf16); no loss scaling is needed with bf16. Teachers, pruning, probes stay fp32.
    amp: str = "auto"
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 \
                or (self.base_epochs is not None and self.base_epochs < 1):
            raise ConfigError("epochs and batch size must be >= 1 and lr > 0")
        if (self.finetune_epochs is not None and self.finetune_epochs < 0) \
                or not 0.0 <= self.finetune_share <= 1.0:
            raise ConfigError("fine-tune epochs must be >= 0 and the fine-tune share in [0, 1]")
        if self.prune_ratio is not None and not 0.0 <= self.prune_ratio < 1.0:
            raise ConfigError(f"pruning ratio must be in [0, 1), got {self.prune_ratio}")
        # "auto" is resolved by the caller; base_augment None is `augment`
        for name, value in (("augment", self.augment),
                            ("base_augment", self.base_augment or self.augment)):
            if value not in AUGMENTATIONS:
                raise ConfigError(f"{name} must be one of {', '.join(AUGMENTATIONS)}, "
                                  f"got {value!r}")
        if self.amp not in ("auto", "off"):
            raise ConfigError(f"amp must be 'auto' or 'off', got {self.amp!r}")
        if self.teacher_mode not in ("cache", "live"):
            raise ConfigError(f"teacher_mode must be 'cache' or 'live', got {self.teacher_mode!r}")
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(f"classifier must be one of {', '.join(CLASSIFIERS)}, "
                              f"got {self.classifier!r}")
        if self.stats_features not in STATS_FEATURES:
            raise ConfigError(f"stats_features must be one of {', '.join(STATS_FEATURES)}, "
                              f"got {self.stats_features!r}")
        if self.schedule not in ("cosine", "step"):
            raise ConfigError(f"schedule must be 'cosine' or 'step', got {self.schedule!r}")
        if self.loss_reduction not in REDUCTIONS:
            raise ConfigError(f"loss reduction must be one of {', '.join(REDUCTIONS)}, "
                              f"got {self.loss_reduction!r}")

    @property
    def epochs_after_pruning(self) -> int:
        if self.finetune_epochs is not None:
            return self.finetune_epochs
        return max(1, int(round(self.finetune_share * self.epochs, 6)))  # paper: 15 -> 7

    @property
    def epochs_before_pruning(self) -> int:
        """Epochs of the first phase of a packing step (at least 1)."""
        if not self.finetune_inside:
            return self.epochs
        return max(1, self.epochs - self.epochs_after_pruning)

    def of_base_step(self) -> StepConfig:
        """The config the base step trains with (`base_augment`, `base_epochs`)."""
        return replace(self, augment=self.base_augment or self.augment,
                       epochs=self.base_epochs or self.epochs)

    @property
    def n_views(self) -> int:
        return 2 if self.augment == "flip" else 1

    @property
    def live_teachers(self) -> bool:
        """Teachers run on every batch: asked for, or because they score randomly shifted
        images, which no per-step cache can hold."""
        return self.teacher_mode == "live" or (self.augment == "shift"
                                               and self.teachers_see_shift)


# Named recipes: "default" is StepConfig's defaults; "paper" is M2KD Section 4.2 (lr 2.0
# with the mean-reduced BCE of iCaRL, batch 128, lr / 5 at half of each phase, weight
# decay in step 1 only, fine-tuning for half the epochs after pruning).
RECIPES: dict[str, dict] = {
    "default": {},
    "paper": dict(lr=2.0, batch_size=128, weight_decay=1e-5, later_weight_decay=0.0,
                  schedule="step", loss_reduction="mean", finetune_share=0.5,
                  finetune_inside=False),
}


def recipe_config(name: str, **overrides) -> StepConfig:
    """A StepConfig from a named recipe; `None` overrides keep the recipe's value."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    values = {**RECIPES[name], **{k: v for k, v in overrides.items() if v is not None}}
    return StepConfig(**values)


@dataclass
class StepData:
    """The images of one step, normalised, with labels indexing the classes seen so far."""

    images: torch.Tensor  # (N, C, H, W) float32
    labels: torch.Tensor  # (N,) int64


@dataclass
class StepContext:
    step: int
    n_old: int
    n_seen: int
    class_steps: list[int]  # the step that introduced each seen class
    previous: Bundle | None
    data: StepData
    config: StepConfig
    device: torch.device
    model: ResNet
    teacher_model: Callable[[int], nn.Module]  # frozen model of an earlier step, on device
    state: dict = field(default_factory=dict)  # a method's scratch space for this step


class Method(Protocol):
    name: str
    reads_old_data: bool  # False: exemplar-free, the engine refuses old-class images
    params: dict  # hyper-parameters, recorded in the bundle
    # False: the method classifies with more than the head, so its base step gets no
    # rotation classes (runtime/base_rotations.py).
    head_only: bool

    def before_step(self, ctx: StepContext) -> None: ...

    def loss(self, ctx: StepContext, out: BackboneOutput, batch: Batch
             ) -> dict[str, torch.Tensor]: ...

    def after_step(self, ctx: StepContext) -> None: ...


@dataclass
class StepReport:
    step: int
    seconds: float
    images_seen: int
    epoch_losses: list[dict[str, float]]
    kept_fraction: float | None  # share of the free weights this step took (pruning)
    peak_memory_bytes: int
    # Eval-mode top-1 of the step's model on its own new-class training images: a step
    # that did not learn its new classes shows here first (docs/methods.md).
    train_accuracy_new: float | None = None

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "images_per_second": self.images_per_second}


def run_step(previous: Bundle | None, data: StepData, new_classes: list[str], method: Method,
             config: StepConfig, *, arch: str | None = None,
             input_spec: InputSpec | None = None,
             snapshots: list[Bundle] | None = None) -> tuple[Bundle, StepReport]:
    """Learn `new_classes` from `data` on top of `previous` (None: the base step).

    Teachers are rebuilt from `previous` (owner masks), or, for non-packing methods,
    from `snapshots[j - 1]`, the bundle as it was after step j.
    Returns a new in-memory bundle with the step appended; `previous` is not modified.
    """
    config.validate()
    if previous is None:
        config = config.of_base_step()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    # Pruned and decayed weights drift into denormal floats, which x86 CPUs compute up to
    # 5x slower (digits, 720 images x 12 epochs: 89 s vs 18 s, same losses). Flushing them
    # to zero changes nothing above 1e-38; the probes' tolerance is 1e-5.
    torch.set_flush_denormal(True)
    n_new, rotate = len(new_classes), _rotates(previous, config, method)
    if rotate:
        data = StepData(*with_rotations(data.images, data.labels, n_new))
        new_classes = new_classes + rotation_names(new_classes)
    ctx = _context_of_this_rank(previous, data, new_classes, config, device, arch, input_spec,
                                snapshots)
    _check_data(ctx, method)
    masks = _masks_of(previous, ctx.model)
    owned_before = _owned_snapshot(ctx.model, masks)
    started, images_seen = time.perf_counter(), 0
    _reset_peak_memory(device)

    method.before_step(ctx)
    # Phase 1: train the free weights (M == 0) with everything the method needs.
    packing = config.prune_ratio is not None
    trainable = (lambda m: m == 0) if packing else (lambda m: torch.ones_like(m, dtype=bool))
    epochs = config.epochs_before_pruning if packing else config.epochs
    losses = _train_phase(ctx, method, masks, trainable, epochs, "train")
    images_seen += epochs * len(ctx.data.labels)
    kept = None
    if packing:
        # Phase 2: prune (Algorithm 1), then fine-tune only what this step now owns.
        kept = _prune(ctx.model, masks, ctx.step, config.prune_ratio).kept_fraction
        check_identical(masks, "the owner masks after pruning")
        epochs = config.epochs_after_pruning
        losses += _train_phase(ctx, method, masks, lambda m: m == ctx.step, epochs, "finetune")
        images_seen += epochs * len(ctx.data.labels)
    else:
        # One model, no packing: everything belongs to "step 1" so the last step rebuilds.
        masks = {name: torch.ones_like(m) for name, m in masks.items()}
    method.after_step(ctx)
    _check_after_step(ctx, masks, packing, owned_before)
    if rotate:
        _drop_rotation_classes(ctx, n_new)
        new_classes = new_classes[:n_new]
    # From here on the step is what the bundle stores: its BatchNorm and heads at 16 bits
    # (runtime/step_precision.py), so probes, statistics and later teachers all see it.
    round_private_tensors(ctx.model)
    train_new, stats = what_the_step_learned(ctx)

    bundle = _append_step(previous, ctx, masks, new_classes, method, config, arch,
                          input_spec, stats)
    images_seen *= world()[1]  # every rank trained on its shard: the global count
    report = StepReport(ctx.step, time.perf_counter() - started, images_seen, losses, kept,
                        _peak_memory(device), train_new)
    return bundle, report


def _rotates(previous: Bundle | None, config: StepConfig, method: Method) -> bool:
    """Rotation classes in this step? The base step only, and not for a method with a
    classifier of its own beside the head (PODNet's proxies)."""
    return previous is None and config.base_rotations and method.head_only


def _drop_rotation_classes(ctx: StepContext, n: int) -> None:
    """The step as if it had learned its `n` real classes only: the heads' first rows,
    and the unrotated images (labels below n) for its statistics and report."""
    ctx.model.keep_classes(n)
    ctx.n_seen, ctx.class_steps = n, ctx.class_steps[:n]
    ctx.data = _first_classes(ctx.data, n)
    if "exact_shard" in ctx.state:
        ctx.state["exact_shard"] = _first_classes(ctx.state["exact_shard"], n)


def _first_classes(data: StepData, n: int) -> StepData:
    keep = data.labels < n
    return StepData(data.images[keep], data.labels[keep])


def _check_after_step(ctx: StepContext, masks: dict[str, torch.Tensor], packing: bool,
                      owned_before: dict[str, torch.Tensor]) -> None:
    """Invariant 1 on this rank; in a distributed run, every rank takes rank 0's BatchNorm
    buffers and must hold the same weights."""
    if packing:
        _check_owned_unchanged(ctx.model, masks, ctx.step, owned_before)
    if world()[1] > 1:
        broadcast_buffers(ctx.model)
        check_identical({**_owned_snapshot(ctx.model, masks), **batchnorm_state(ctx.model)},
                        "the model after the step")


# ---------------------------------------------------------------- set-up

def _context_of_this_rank(previous, data, new_classes, config, device, arch, input_spec,
                          snapshots) -> StepContext:
    """The step's context; in a distributed run, on this rank's shard with its share of
    the batch, and a DistributedDataParallel forward (runtime/distributed.py)."""
    exact_shard = None
    if world()[1] > 1:
        data, exact_shard, config = _shard(data, config, previous)
    ctx = _make_context(previous, data, new_classes, config, device, arch, input_spec,
                        snapshots)
    if exact_shard is not None:
        ctx.state["exact_shard"] = exact_shard
    ctx.state["forward"] = wrap(ctx.model, device)
    return ctx


def _shard(data: StepData, config: StepConfig, previous: Bundle | None
           ) -> tuple[StepData, StepData, StepConfig]:
    """This rank's (padded, exact) shard of the step's images and its per-rank config
    (the global batch split evenly; runtime/distributed.py)."""
    step = previous.num_steps + 1 if previous else 1
    padded, exact = shard_indices(len(data.labels), config.seed + 7919 * step)
    size = world()[1]
    per_rank = replace(config, batch_size=max(1, config.batch_size // size))
    return (StepData(data.images[padded], data.labels[padded]),
            StepData(data.images[exact], data.labels[exact]), per_rank)


def _make_context(previous, data, new_classes, config, device, arch, input_spec,
                  snapshots) -> StepContext:
    if not new_classes:
        raise DataError("a step must add at least one class")
    if previous is None:
        if arch is None or input_spec is None:
            raise ConfigError("the base step needs an architecture and an input spec")
        model = create_backbone(arch, len(new_classes), input_spec.channels)
        class_steps, step = [1] * len(new_classes), 1
    else:
        if previous.num_steps >= MAX_STEPS:
            raise ConfigError(f"a bundle holds at most {MAX_STEPS} steps")
        clash = sorted(set(new_classes) & set(previous.classes))
        if clash:
            raise DataError(f"classes already in the bundle: {', '.join(clash)}")
        model = model_of_step(previous)  # W with free weights at zero, last BN and heads
        model.add_classes(len(new_classes))
        step = previous.num_steps + 1
        class_steps = previous.step_of_class() + [step] * len(new_classes)
    n_seen = len(class_steps)

    def teacher_model(j: int) -> nn.Module:
        return model_of_step(snapshots[j - 1] if snapshots else previous, j, device)

    return StepContext(step, n_seen - len(new_classes), n_seen, class_steps, previous, data,
                       config, device, model.to(device).train(), teacher_model)


def _check_data(ctx: StepContext, method: Method) -> None:
    labels = ctx.data.labels
    if len(labels) == 0 or len(labels) != len(ctx.data.images):
        raise DataError("a step needs at least one image and one label per image")
    if int(labels.max()) >= ctx.n_seen or int(labels.min()) < 0:
        raise DataError("labels must index the classes seen so far")
    if not method.reads_old_data and int(labels.min()) < ctx.n_old:
        raise DataError(f"{method.name} is exemplar-free but was given images of old classes")


def _masks_of(previous: Bundle | None, model: nn.Module) -> dict[str, torch.Tensor]:
    if previous is None:
        params = dict(model.named_parameters())
        return empty_masks({n: params[n] for n in masked_parameter_names(model)})
    return {name: m.clone() for name, m in previous.masks.items()}


# ---------------------------------------------------------------- training

def _train_phase(ctx: StepContext, method: Method, masks: dict[str, torch.Tensor],
                 trainable_where, epochs: int, phase: str) -> list[dict[str, float]]:
    """SGD over the step's data; only weights where `trainable_where(mask)` may change."""
    cfg, model = ctx.config, ctx.model
    forward = ctx.state.get("forward", model)  # DistributedDataParallel when distributed
    params = dict(model.named_parameters())
    grad_masks = {n: trainable_where(m).to(ctx.device, torch.float32) for n, m in masks.items()}
    wd = cfg.weight_decay if ctx.step == 1 else cfg.later_weight_decay
    # weight_decay=0 in the optimizer: decay is added to the masked gradient below, so an
    # owned weight never receives any update, not even through momentum (invariant 1).
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=0.0)
    schedule = _lr_schedule(optimizer, cfg, epochs)
    generator = torch.Generator().manual_seed(cfg.seed + 1000 * ctx.step)
    history = []
    bar = tqdm(range(epochs), desc=f"step {ctx.step} {phase}", disable=not cfg.progress,
               leave=False)
    # Distributed runs (`forward` is then DDP's wrapper) keep NCHW: DDP's gradient buckets
    # are laid out like the weights.
    layout = fast_memory_format(ctx.device) if forward is model else torch.contiguous_format
    model.train().to(memory_format=layout)
    for _ in bar:
        sums: dict[str, float] = {}
        batches = 0
        for batch in _batches(ctx, generator):
            with _autocast(ctx):
                parts = method.loss(ctx, forward(batch.images.contiguous(memory_format=layout)),
                                    batch)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            _mask_gradients(params, grad_masks, wd)
            optimizer.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            batches += 1
        schedule.step()
        history.append({k: v / batches for k, v in sums.items()})
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
    model.to(memory_format=torch.contiguous_format)  # what pruning, probes and bundle expect
    return history


def _lr_schedule(optimizer, cfg: StepConfig, epochs: int):
    """Per-epoch schedule of one phase: cosine to 0, or the paper's step decay."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    milestones = sorted({max(1, math.ceil(f * epochs)) for f in cfg.lr_milestones})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, cfg.lr_gamma)


def _autocast(ctx: StepContext):
    on = (ctx.config.amp == "auto" and ctx.device.type == "cuda"
          and torch.cuda.is_bf16_supported())
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=on) if on \
        else contextlib.nullcontext()


def _batches(ctx: StepContext, generator: torch.Generator):
    data, cfg = ctx.data, ctx.config
    order = torch.randperm(len(data.labels), generator=generator)
    for start in range(0, len(order), cfg.batch_size):
        index = order[start:start + cfg.batch_size]
        if cfg.augment == "flip":
            view = torch.randint(0, 2, (len(index),), generator=generator)
        else:
            view = torch.zeros(len(index), dtype=torch.long)
        index, view = index.to(ctx.device), view.to(ctx.device)
        images = apply_view(data.images[index.to(data.images.device)].to(ctx.device), view)
        labels = data.labels[index.to(data.labels.device)].to(ctx.device)
        if cfg.augment != "shift":
            yield Batch(images, labels, index, view)
            continue
        offsets = torch.randint(-SHIFT_PIXELS, SHIFT_PIXELS + 1, (len(index), 2),
                                generator=generator)
        shifted = shift_images(images, offsets, SHIFT_PIXELS)
        yield Batch(shifted, labels, index, view,
                    None if cfg.teachers_see_shift else images)


@torch.no_grad()
def _mask_gradients(params: dict[str, nn.Parameter], grad_masks: dict[str, torch.Tensor],
                    weight_decay: float) -> None:
    """grad += weight_decay * w, then grad *= mask: one fused call each over all the
    parameters (a loop costs two kernel launches per parameter and batch on a GPU)."""
    named = [(n, p) for n, p in params.items() if p.grad is not None]
    if weight_decay:
        torch._foreach_add_([p.grad for _, p in named], [p for _, p in named],
                            alpha=weight_decay)
    masked = [(p.grad, grad_masks[n]) for n, p in named if n in grad_masks]
    if masked:
        torch._foreach_mul_([g for g, _ in masked], [m for _, m in masked])


def _prune(model: nn.Module, masks: dict[str, torch.Tensor], step: int, ratio: float
           ) -> PruneStats:
    params = dict(model.named_parameters())
    total = PruneStats(0, 0)
    for name, mask in masks.items():
        stats = prune_free_weights(params[name].data, mask, step, ratio)
        total = PruneStats(total.kept + stats.kept, total.freed + stats.freed)
    return total


def _new_class_data(ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's images of its new classes only (exemplar methods also get old ones);
    in a distributed run, this rank's shard without its padding."""
    data = ctx.state.get("exact_shard", ctx.data)
    new = data.labels >= ctx.n_old
    return data.images[new], data.labels[new]


@torch.no_grad()
def what_the_step_learned(ctx: StepContext) -> tuple[float, dict[str, ClassStats]]:
    """The trained model's head top-1 (all seen classes) on the step's new-class images,
    and those classes' statistics in the base snapshot's space and this step's own space
    (docs/design.md, "Class statistics"). The trained model's pooled features serve both:
    its logits are its head over them, so the new images go through it once."""
    images, labels = _new_class_data(ctx)
    classes = list(range(ctx.n_old, ctx.n_seen))
    kind = statistics_features_of(ctx.previous, ctx.config)
    features = pooled_features(ctx.model, images, ctx.device, kind)
    spaces = {"base": features} if ctx.step == 1 else \
        {"base": pooled_features(ctx.teacher_model(1), images, ctx.device, kind), "own": features}
    stats = {}
    for space, space_features in spaces.items():
        moments = moments_of(space_features, labels, classes)
        stats[space] = Moments(*(all_reduce_sum(t) for t in moments.tensors())).statistics()
        round_in_place(stats[space].mean)  # stored at 16 bits (runtime/step_precision.py)
        round_in_place(stats[space].cov)
    accuracy = _head_accuracy(ctx.model, last_stage(features, ctx.model.feature_dim), labels,
                              ctx.device)
    ctx.model.train()
    return accuracy, stats


def _head_accuracy(model: ResNet, features: torch.Tensor, labels: torch.Tensor,
                   device: torch.device) -> float:
    """Top-1 of the head over pooled features, summed over the ranks of a distributed run."""
    predicted = run_in_batches(lambda f: model.head(f).argmax(1), features, device)
    counts = torch.tensor([float((predicted == labels).sum()), float(len(labels))])
    right, total = all_reduce_sum(counts).tolist()
    return right / max(total, 1.0)


# ---------------------------------------------------------------- invariant 1

def _owned_snapshot(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach().cpu().clone() for n in masks}


def _check_owned_unchanged(model: nn.Module, masks: dict[str, torch.Tensor], step: int,
                           before: dict[str, torch.Tensor]) -> None:
    """Guard: weights owned by earlier steps must be bit-identical after this step."""
    params = dict(model.named_parameters())
    for name, old in before.items():
        owned = (masks[name] >= 1) & (masks[name] < step)
        if not torch.equal(params[name].detach().cpu()[owned], old[owned]):
            raise InvariantError(f"a weight of {name} owned by an earlier step changed")


# ---------------------------------------------------------------- result

@torch.no_grad()
def _append_step(previous: Bundle | None, ctx: StepContext, masks: dict[str, torch.Tensor],
                 new_classes: list[str], method: Method, config: StepConfig,
                 arch: str | None, input_spec: InputSpec | None,
                 stats: dict[str, ClassStats]) -> Bundle:
    model = ctx.model.cpu().eval()
    spec = previous.input_spec if previous else input_spec
    params = dict(model.named_parameters())
    probe = make_probe_input(spec)
    record = StepRecord(
        classes=list(new_classes),
        batchnorm=batchnorm_state(model),
        head={k: v.detach().clone() for k, v in model.head.state_dict().items()},
        aux_head={k: v.detach().clone() for k, v in model.aux_head.state_dict().items()},
        probe_input=probe,
        probe_logits=model(probe).logits.detach().clone(),
        stats=stats,
    )
    info = {"name": method.name, "params": dict(getattr(method, "params", {})),
            "step_config": {k: v for k, v in asdict(config).items()
                            if k not in ("device", "progress")}}
    return Bundle(
        arch=previous.arch if previous else arch,
        input_spec=spec,
        weights={n: params[n].detach().clone() for n in masks},
        masks=masks,
        steps=(previous.steps if previous else []) + [record],
        method=info,
        classifier=_classifier_of(previous, config),
        stats_features=statistics_features_of(previous, config),
    )


def statistics_features_of(previous: Bundle | None, config: StepConfig) -> str:
    """The bundle's kind of statistics features: the base step's configured one."""
    return previous.statistics_features if previous is not None else config.stats_features


def _classifier_of(previous: Bundle | None, config: StepConfig) -> dict:
    """The configured classifier; the head for a bundle whose earlier steps have no class
    statistics (a v1 bundle: its old classes can only be told apart by the head)."""
    if previous is not None and not previous.has_class_statistics:
        return classifier_config("head")
    return classifier_config(config.classifier)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> int:
    """Peak CUDA allocation on GPU; the process's peak resident size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
