"""The update engine: no old data, teachers cached once per step, config checks."""

from __future__ import annotations

import pytest
import torch

from m2kd.runtime import engine as engine_module
from m2kd.runtime import teachers as teachers_module
from m2kd.runtime.engine import StepConfig, StepData, recipe_config, run_step
from m2kd.runtime.errors import ConfigError, DataError
from m2kd.runtime.fold_batchnorm import fold_batchnorm
from m2kd.runtime.m2kd import M2KD
from m2kd.runtime.reconstruct import model_of_step
from m2kd.runtime.teachers import Batch, LiveTeachers, TeacherCache, assign_teachers
from m2kd.trainer.datasets import class_order
from m2kd.trainer.protocol import Protocol, run_protocol
from tests.conftest import fast_config, steps_of


def test_exemplar_free_step_refuses_images_of_old_classes(three_step_bundle, digits):
    (names, data), = steps_of(digits, 4)[3:4]
    old = StepData(digits.train_images[:4], torch.tensor([0, 1, 0, 1]))
    mixed = StepData(torch.cat([data.images, old.images]), torch.cat([data.labels, old.labels]))
    with pytest.raises(DataError, match="exemplar-free"):
        run_step(three_step_bundle[-1], mixed, names, M2KD(), fast_config())


def test_protocol_hands_each_step_only_its_new_classes(digits, tmp_path, step_labels):
    run_protocol(digits, Protocol(2, 2, class_order(10, 0)[:6]), "m2kd",
                 fast_config(epochs=1), tmp_path, log=lambda s: None)
    assert step_labels == [[0, 1], [2, 3], [4, 5]]


def _teachers_of_step_4(bundle, digits, n_views: int):
    """The data of step 4, its teachers' cache over `n_views` views, and live teachers."""
    (_, data), = steps_of(digits, 4)[3:4]
    assignment = assign_teachers(bundle.step_of_class(), 4, "all")
    def model_for(j):
        return model_of_step(bundle, j)

    cache = TeacherCache.build(model_for, assignment, data.images, n_views, torch.device("cpu"))
    return data, cache, LiveTeachers(model_for, assignment)


def test_teacher_cache_equals_per_batch_teachers(three_step_bundle, digits):
    data, cache, live = _teachers_of_step_4(three_step_bundle[-1], digits, 2)
    index = torch.arange(0, 40, 3)
    view = torch.tensor([0, 1] * 7)[:len(index)]
    images = teachers_module.apply_view(data.images[index], view)
    batch = Batch(images, data.labels[index], index, view)
    for cached, direct in zip(cache.targets(batch), live.targets(batch)):
        assert torch.allclose(cached, direct, atol=1e-6)


def test_a_shift_moves_each_image_by_its_own_offset_and_repeats_the_edge():
    images = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(2, 1, 4, 5)
    out = teachers_module.shift_images(images, torch.tensor([[0, 0], [1, -2]]), 2)
    assert torch.equal(out[0], images[0])
    rows = (torch.arange(4) + 1).clamp(max=3)  # pixel (r, c) reads (r + 1, c - 2), clamped
    cols = (torch.arange(5) - 2).clamp(min=0)
    assert torch.equal(out[1, 0], images[1, 0][rows][:, cols])


def test_unshifted_teachers_give_the_same_targets_cached_or_live(three_step_bundle, digits):
    """`teachers_see_shift=False` (sessions 9-10): the student sees the shifted image and
    every teacher the image as it is; the cache (built before training) must give what
    live teachers give."""
    data, cache, live_teachers = _teachers_of_step_4(three_step_bundle[-1], digits, 1)
    index = torch.arange(0, 40, 3)
    unshifted = data.images[index]
    offsets = torch.tensor([[2, -1], [0, 1], [-2, 2]]).repeat(5, 1)[:len(index)]
    shifted = teachers_module.shift_images(unshifted, offsets, 2)
    batch = Batch(shifted, data.labels[index], index, torch.zeros_like(index), unshifted)
    live = live_teachers.targets(batch)
    for cached, direct in zip(cache.targets(batch), live):
        assert torch.allclose(cached, direct, atol=1e-6)
    on_shifted = live_teachers.targets(Batch(
        shifted, batch.labels, index, batch.view))
    assert not torch.allclose(on_shifted[0], live[0], atol=1e-3)  # the shift is seen


class _TeachersSeen(M2KD):
    """M2KD that records the teachers each step distils from."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def before_step(self, ctx):
        super().before_step(ctx)
        self.seen.append(ctx.state["teachers"])


@pytest.mark.parametrize("see_shift", [True, False])
def test_shifted_images_reach_the_teachers_unless_asked_not_to(three_step_bundle, digits,
                                                                trained_batches, see_shift):
    (names, data), = steps_of(digits, 4)[3:4]
    method = _TeachersSeen()
    config = fast_config(epochs=1, augment="shift", teachers_see_shift=see_shift)
    run_step(three_step_bundle[-1], data, names, method, config)
    first = trained_batches[0]
    if see_shift:
        assert isinstance(method.seen[0], LiveTeachers)
        assert first.teacher_images is first.images
    else:
        assert isinstance(method.seen[0], TeacherCache)
        assert torch.equal(first.teacher_images, data.images[first.index])
    assert not torch.equal(first.images, data.images[first.index])  # the student's is shifted
    assert StepConfig(augment="flip").live_teachers is False


def test_a_shifted_step_trains_on_shifted_images(digits, trained_batches):
    (names, data), = steps_of(digits, 1)
    run_step(None, data, names, M2KD(), fast_config(epochs=1, augment="shift"),
             arch="resnet_small", input_spec=digits.input_spec)
    first = trained_batches[0]
    assert not torch.equal(first.images, data.images[first.index])
    with pytest.raises(ConfigError, match="augment must be one of flip, shift, none"):
        StepConfig(augment="crop").validate()


def test_the_base_step_trains_with_its_own_recipe_and_later_steps_with_theirs(
        digits, trained_batches):
    """`base_augment`, `base_epochs`: shifts and more epochs in the step trained before the
    model ships, neither on the device (the Fashion-MNIST default, trainer/datasets.py)."""
    (names, data), (names_2, data_2) = steps_of(digits, 2)
    config = fast_config(epochs=1, finetune_epochs=0, augment="none", base_augment="shift",
                         base_epochs=2)
    base, report = run_step(None, data, names, M2KD(), config, arch="resnet_small",
                            input_spec=digits.input_spec)
    assert not torch.equal(trained_batches[0].images, data.images[trained_batches[0].index])
    assert report.images_seen == 2 * len(data.labels)
    trained_batches.clear()
    _, report = run_step(base, data_2, names_2, M2KD(), config)
    assert torch.equal(trained_batches[0].images, data_2.images[trained_batches[0].index])
    assert report.images_seen == len(data_2.labels)
    with pytest.raises(ConfigError, match="base_augment must be one of flip, shift, none"):
        StepConfig(base_augment="crop").validate()
    with pytest.raises(ConfigError, match="epochs and batch size must be >= 1"):
        StepConfig(base_epochs=0).validate()


def test_a_folded_teacher_keeps_its_dtype_and_computes_the_same_function(three_step_bundle,
                                                                       digits):
    """The teacher cache folds each teacher's BatchNorm: the folded convolutions must stay
    on the teacher's device and in its dtype (float64 here, to see rounding only)."""
    model = model_of_step(three_step_bundle[-1], 2).double().eval()
    images = digits.train_images[:16].double()
    expected = model(images)
    folded = fold_batchnorm(model)
    assert folded.stem[0].weight.dtype == torch.float64
    got = folded(images)
    assert torch.allclose(got.logits, expected.logits, atol=1e-10)
    assert torch.allclose(got.aux_logits, expected.aux_logits, atol=1e-10)


def test_teachers_are_rebuilt_once_per_step_not_per_batch(three_step_bundle, digits,
                                                          monkeypatch):
    calls = []
    real = engine_module.model_of_step

    def counting(bundle, step=None, device="cpu"):
        calls.append(step)
        return real(bundle, step, device)

    monkeypatch.setattr(engine_module, "model_of_step", counting)
    (names, data), = steps_of(digits, 4)[3:4]
    run_step(three_step_bundle[-1], data, names, M2KD(), fast_config(epochs=2, batch_size=16))
    # The live model (last step) once, then each teacher once, though there were many batches,
    # and snapshot 1 once more for the new classes' statistics in the base space.
    assert sorted(calls, key=str) == [1, 1, 2, 3, None]


def test_bad_step_config_is_refused(digits):
    (names, data), = steps_of(digits, 1)
    with pytest.raises(ConfigError, match="pruning ratio"):
        run_step(None, data, names, M2KD(), fast_config(prune_ratio=1.5), arch="resnet_small",
                 input_spec=digits.input_spec)


def test_fine_tuning_after_pruning_takes_a_share_of_the_epochs():
    assert StepConfig().epochs_after_pruning == 3  # 15 epochs, a fifth (docs/methods.md)
    assert recipe_config("paper").epochs_after_pruning == 7  # "another half": 15 // 2
    assert recipe_config("paper", epochs=80).epochs_after_pruning == 40  # Sec. 4.2
    assert StepConfig(epochs=2).epochs_after_pruning == 1  # never zero unless asked
    assert StepConfig(finetune_epochs=0).epochs_after_pruning == 0
    # The default takes them out of the step's epochs; the paper adds them after.
    assert StepConfig().epochs_before_pruning == 12
    assert recipe_config("paper", epochs=80).epochs_before_pruning == 80
    assert StepConfig(epochs=1).epochs_before_pruning == 1  # one epoch each side at least
    assert StepConfig(finetune_epochs=0).epochs_before_pruning == 15
    with pytest.raises(ConfigError, match="fine-tune share"):
        StepConfig(finetune_share=1.5).validate()


def test_a_packing_step_reads_its_images_as_often_as_a_plain_one(digits):
    (names, data), = steps_of(digits, 1)
    config = fast_config(epochs=5)  # 4 epochs, prune, 1 epoch of fine-tuning
    _, report = run_step(None, data, names, M2KD(), config, arch="resnet_small",
                         input_spec=digits.input_spec)
    assert len(report.epoch_losses) == 5
    assert report.images_seen == 5 * len(data.labels)
    assert report.kept_fraction is not None  # it did prune


def test_existing_class_name_is_refused(three_step_bundle, digits):
    (_, data), = steps_of(digits, 4)[3:4]
    existing = three_step_bundle[-1].classes[0]
    with pytest.raises(DataError, match=f"already in the bundle: {existing}"):
        run_step(three_step_bundle[-1], data, [existing, "new"], M2KD(), fast_config())


class _LayoutRecorder(M2KD):
    """M2KD that notes, at every loss, whether the model trains in channels-last."""

    def __init__(self):
        super().__init__()
        self.channels_last: list[bool] = []

    def loss(self, ctx, out, batch):
        conv = next(m for m in ctx.model.modules() if isinstance(m, torch.nn.Conv2d)
                    and m.in_channels > 1 and m.kernel_size == (3, 3))  # layouts differ
        self.channels_last.append(conv.weight.is_contiguous(memory_format=torch.channels_last)
                                  and not conv.weight.is_contiguous())
        return super().loss(ctx, out, batch)


def test_a_cpu_step_trains_in_channels_last_and_stores_nchw(three_step_bundle, digits):
    (names, data), = steps_of(digits, 4)[3:4]
    method = _LayoutRecorder()
    bundle, _ = run_step(three_step_bundle[-1], data, names, method,
                         fast_config(epochs=2, batch_size=32))
    assert method.channels_last and all(method.channels_last)  # runtime/devices.py
    assert all(w.is_contiguous() for w in bundle.weights.values())
