"""The trained nn.Module: an HF model whose forward returns the summed token loss.

Computing the loss inside one module's forward keeps FSDP2's root unshard around the lm_head and
lets the kernel patcher swap in a fused linear cross-entropy without touching the HF model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class CausalLMWithLoss(nn.Module):
    def __init__(self, lm: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.lm = lm
        self.loss_fn = loss_fn

    def forward(self, labels: torch.Tensor, **model_inputs) -> torch.Tensor:
        """Returns the SUM of token cross-entropies over labels != -100."""
        outputs = self.lm.model(use_cache=False, **model_inputs)
        return self.loss_fn(outputs.last_hidden_state, self.lm.lm_head.weight, labels)
