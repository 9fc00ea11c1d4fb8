"""Strategy.step: clipping, the non-finite skip and the update live in the strategy (one process,
CPU; the two-rank agreement is in tests/distributed/test_faults.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lmms_engine.parallel.deepspeed import DeepSpeedZero
from lmms_engine.parallel.single import SingleDevice


def _model_with_grads(scale: float = 1.0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    (model(torch.ones(2, 4)).sum() * scale).backward()
    return model, optimizer


def test_step_clips_updates_and_returns_the_pre_clip_norm():
    model, optimizer = _model_with_grads(scale=100.0)
    expected = float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()])))
    before = [p.detach().clone() for p in model.parameters()]
    grad_norm, skipped = SingleDevice(device="cpu").step(model, optimizer, max_norm=1.0, loss=2.0)
    assert not skipped
    assert grad_norm == pytest.approx(expected, rel=1e-6) and grad_norm > 1.0
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())  # zeroed after the update


@pytest.mark.parametrize("loss, poison", [(float("nan"), False), (float("inf"), False), (1.0, True)],
                         ids=["nan_loss", "inf_loss", "nan_grad"])
def test_a_non_finite_step_is_skipped_and_changes_nothing(loss, poison):
    model, optimizer = _model_with_grads()
    if poison:
        model.weight.grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    grad_norm, skipped = SingleDevice(device="cpu").step(model, optimizer, max_norm=1.0, loss=loss)
    assert skipped
    assert poison == math.isnan(grad_norm)  # the norm is still reported when only the loss was bad
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    assert optimizer.state_dict()["state"] == {}  # no moment was updated


class _FakeZeroOptimizer:
    def __init__(self):
        self.clip_grad, self.averaged_gradients, self.zeroed = 0.0, {0: [torch.ones(1)]}, False

    def zero_grad(self, set_to_none: bool = True):
        self.zeroed = True


class _FakeEngine:
    """What DeepSpeedZero.step touches of a DeepSpeed engine."""

    def __init__(self):
        self.optimizer, self.steps = _FakeZeroOptimizer(), 0

    def step(self):
        self.steps += 1

    def get_global_grad_norm(self):
        return 3.5


def _zero(engine) -> DeepSpeedZero:
    strategy = DeepSpeedZero(stage=2, device="cpu")
    strategy.engine = engine
    return strategy


def test_deepspeed_step_sets_the_threshold_and_steps_the_engine_once():
    engine = _FakeEngine()
    assert _zero(engine).step(None, engine.optimizer, max_norm=2.0, loss=1.0) == (3.5, False)
    assert engine.steps == 1 and engine.optimizer.clip_grad == 2.0
    assert _zero(engine).step(None, engine.optimizer, max_norm=float("inf"), loss=1.0) == (3.5, False)
    assert engine.steps == 2 and engine.optimizer.clip_grad == 0.0  # inf: DeepSpeed's "no clipping"


def test_deepspeed_step_drops_the_gradients_of_a_non_finite_loss_without_an_update():
    engine = _FakeEngine()
    grad_norm, skipped = _zero(engine).step(None, engine.optimizer, max_norm=1.0, loss=float("nan"))
    assert skipped and math.isnan(grad_norm)
    assert engine.steps == 0
    assert engine.optimizer.zeroed and engine.optimizer.averaged_gradients == {0: None}
