"""Causal-LM loss as a SUM over trained label tokens; the training step divides by the global count.

Labels arrive already shifted per sample (labels[t] is the token that follows t in the same
document, -100 where nothing is trained), so no label crosses a document boundary in a pack.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def cross_entropy_sum(hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Materialises logits (fp32) and sums the token cross-entropies."""
    logits = F.linear(hidden, lm_head_weight).float()
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")


def liger_fused_cross_entropy_sum():
    """Liger's fused linear cross-entropy: logits are never materialised (chunked on the GPU)."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    fused = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")

    def loss(hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return fused(lm_head_weight, hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1))

    return loss
