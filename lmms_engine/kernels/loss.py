"""Causal-LM loss as a SUM over trained label tokens; the training step divides by the global count.

Labels arrive already shifted per sample (labels[t] is the token that follows t in the same
document, -100 where nothing is trained), so no label crosses a document boundary in a pack.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
# Tokens per lm-head chunk: the logits of one chunk (fp32: chunk x vocab x 4 bytes, 2.5 GB at a
# 152k vocabulary) are the most the loss ever holds, whatever the sequence length.
CHUNK_TOKENS = 4096


def cross_entropy_sum(hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor,
                      chunk_tokens: int = CHUNK_TOKENS) -> torch.Tensor:
    """The summed token cross-entropies, chunk by chunk along the tokens: each chunk's logits are
    made, reduced to its loss and dropped; backward recomputes them one chunk at a time
    (torch.utils.checkpoint), so the full (tokens x vocab) logits never exist."""
    hidden, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    if hidden.shape[0] <= chunk_tokens:
        return _chunk_loss(hidden, lm_head_weight, labels)
    total = hidden.new_zeros((), dtype=torch.float32)
    for h, y in zip(hidden.split(chunk_tokens), labels.split(chunk_tokens)):
        total = total + checkpoint(_chunk_loss, h, lm_head_weight, y, use_reentrant=False)
    return total


def _chunk_loss(hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, lm_head_weight).float()
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def liger_fused_cross_entropy_sum():
    """Liger's fused linear cross-entropy: logits are never materialised (chunked on the GPU)."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    fused = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")

    def loss(hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return fused(lm_head_weight, hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1))

    return loss
