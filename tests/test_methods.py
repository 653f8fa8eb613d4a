"""Every method runs two steps; LwM's attention loss trains the backbone; orders."""

from __future__ import annotations

import pytest
import torch

from m2kd.runtime.backbones import create_backbone
from m2kd.trainer.lwm import attention_distillation, grad_cam
from m2kd.trainer.methods import METHODS, method_spec
from m2kd.trainer.orders import ICARL_1993, named_order
from m2kd.trainer.protocol import Protocol, run_protocol
from tests.conftest import fast_config


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_runs_two_steps(digits, tmp_path, name):
    protocol = Protocol(2, 2, named_order("seed:0", 10), max_steps=2)
    results = run_protocol(digits, protocol, name, fast_config(epochs=1), tmp_path,
                           log=lambda s: None)
    assert [len(s["classes"]) for s in results["steps"]] == [2, 2]
    assert 0.0 <= results["steps"][-1]["top1"] <= 1.0
    packing = method_spec(name).prune_ratio is not None
    assert (tmp_path / "bundle.safetensors").exists() == packing


def test_lwm_attention_loss_sends_gradient_into_the_backbone():
    torch.manual_seed(0)
    student = create_backbone("resnet_small", 4, 1)
    teacher = create_backbone("resnet_small", 4, 1).eval()
    x = torch.randn(6, 1, 16, 16)
    s_out, t_out = student(x), teacher(x)
    b = s_out.logits.argmax(1, keepdim=True)
    student_map = grad_cam(s_out.logits.gather(1, b).squeeze(1), s_out.stages[-1], True)
    teacher_map = grad_cam(t_out.logits.gather(1, b).squeeze(1), t_out.stages[-1], False)
    attention_distillation(teacher_map.detach(), student_map).backward()
    grads = [p.grad for n, p in student.named_parameters() if n.endswith("conv1.weight")]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_a_detached_student_map_would_train_nothing():
    # The known bug this guards against: detaching the student's Grad-CAM map.
    student = create_backbone("resnet_small", 4, 1)
    out = student(torch.randn(3, 1, 16, 16))
    b = out.logits.argmax(1, keepdim=True)
    student_map = grad_cam(out.logits.gather(1, b).squeeze(1), out.stages[-1], False)
    loss = attention_distillation(torch.rand_like(student_map), student_map.detach())
    assert not loss.requires_grad


def test_attention_distillation_hand_computed():
    teacher = torch.tensor([[3.0, 4.0, 0.0]])  # normalised: 0.6, 0.8, 0
    student = torch.tensor([[0.0, 0.0, 2.0]])  # normalised: 0, 0, 1
    assert attention_distillation(teacher, student).item() == pytest.approx(0.6 + 0.8 + 1.0)


def test_class_orders_of_the_papers():
    assert named_order("icarl1993", 100)[:5] == [87, 0, 52, 58, 44]
    assert named_order("numpy1993", 100)[:4] == [68, 56, 78, 8]
    assert sorted(ICARL_1993) == list(range(100))
    assert named_order("seed:3", 10) == named_order("seed:3", 10)
