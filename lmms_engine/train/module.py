"""The trained nn.Module: an HF model whose forward returns the summed token loss.

Computing the loss inside one module's forward keeps FSDP2's root unshard around the lm_head and
lets the kernel patcher swap in a fused linear cross-entropy without touching the HF model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lmms_engine.models.base import lm_hidden_states

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
HiddenFn = Callable[..., torch.Tensor]


class CausalLMWithLoss(nn.Module):
    """lm: an HF causal LM (has `lm_head`); hidden_fn(lm, **model_inputs) -> last hidden states
    (a model family's own forward, e.g. Qwen2.5-VL's vision features + packed decoder)."""

    def __init__(self, lm: nn.Module, loss_fn: LossFn, hidden_fn: HiddenFn = lm_hidden_states):
        super().__init__()
        self.lm = lm
        self.loss_fn = loss_fn
        self.hidden_fn = hidden_fn

    def forward(self, labels: torch.Tensor, **model_inputs) -> torch.Tensor:
        """Returns the SUM of token cross-entropies over labels != -100."""
        hidden = self.hidden_fn(self.lm, **model_inputs)
        return self.loss_fn(hidden, self.lm.lm_head.weight, labels)
