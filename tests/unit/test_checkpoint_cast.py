"""parallel.common.cast_inputs_before_checkpoint: a checkpointed unit sees the same input dtypes in its
forward and in the recompute of backward (what FSDP2 on torch < 2.13 got wrong for fp32 inputs)."""

from __future__ import annotations

import torch
from torch import nn

from lmms_engine import compat
from lmms_engine.parallel.common import apply_activation_checkpointing, cast_inputs_before_checkpoint


class Block(nn.Module):
    """Records the dtypes of the inputs of every call (forward, then the checkpoint's recompute)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.seen: list[tuple] = []

    def forward(self, hidden, position_embeddings, cu_seqlens=None):
        cos, sin = position_embeddings
        self.seen.append((hidden.dtype, cos.dtype, sin.dtype, cu_seqlens.dtype))
        return self.proj(hidden.float()) * cos.float() + sin.float()


class Tower(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])

    def forward(self, hidden, cos, sin, cu):
        for block in self.blocks:
            hidden = block(hidden, (cos, sin), cu_seqlens=cu)
        return hidden


def _run(cast: bool) -> list[tuple]:
    torch.manual_seed(0)
    tower = Tower()
    apply_activation_checkpointing(tower, (Block,))
    assert sum(compat.is_checkpoint_wrapper(m) for m in tower.modules()) == 2
    if cast:
        assert cast_inputs_before_checkpoint(tower, torch.bfloat16) == 2
    hidden = torch.randn(5, 8, requires_grad=True)
    cos, sin = torch.randn(5, 8), torch.randn(5, 8)  # fp32, like the vision tower's rotary tables
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    tower(hidden, cos, sin, cu).sum().backward()
    assert hidden.grad is not None
    return tower.blocks[0]._checkpoint_wrapped_module.seen


def test_checkpointed_unit_sees_the_cast_inputs_in_forward_and_recompute():
    seen = _run(cast=True)
    assert len(seen) == 2  # forward + recompute
    assert seen[0] == seen[1] == (torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.int32)


def test_without_the_cast_the_inputs_keep_their_dtype():
    seen = _run(cast=False)
    assert seen[0] == seen[1] == (torch.float32, torch.float32, torch.float32, torch.int32)
