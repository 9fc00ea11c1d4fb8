"""AdamW with decoupled weight decay on matrices only (norms and biases are not decayed)."""

from __future__ import annotations

import torch
from torch import nn


def build_adamw(module: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float], eps: float) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    on_cuda = any(p.is_cuda for p in decay + no_decay)
    # fused=True: one kernel for all params on CUDA; the foreach/for-loop path on CPU.
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=on_cuda or None)
