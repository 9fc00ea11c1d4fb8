"""Variable-length attention for encoders beside the decoder (vision towers).

A vision tower attends within each image (full-attention blocks) or each window (the others),
delimited by its own cu_seqlens. transformers hands those cu_seqlens to "flash"-named attention
implementations only; every other implementation gets one call per image / window, thousands of
tiny kernels per step at real resolutions. Naming a registered function "flash..." is not an option:
transformers then tries to load it as a Hub kernel. So, like a Liger patch, the attention modules'
`forward` is replaced on the instance: the same projections and rotary embedding, then ONE
bidirectional varlen kernel call over all images (torch's varlen_attn or flash-attn).

Which modules and which rotary function are the family's (its encoder passes them: e.g.
models/<family>/kernels.py); the modules need a fused `qkv` projection, `num_heads`, `scaling`
and an output `proj`, and take (hidden_states, cu_seqlens, position_embeddings=(cos, sin)).
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable

import torch
from torch import nn

from lmms_engine.kernels import attention

log = logging.getLogger(__name__)

# rotary(q, k, cos, sin) -> (q, k): the tower's own 2-D rotary embedding of queries and keys.
Rotary = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def encoder_varlen_backend(device: torch.device, head_dim: int | None = None) -> str | None:
    """The fastest bidirectional varlen kernel on `device` for heads of `head_dim`, or None (then
    transformers' sdpa stays)."""
    return next((b for b in attention.BIDIRECTIONAL_BACKENDS if attention.is_available(b, device, head_dim)), None)


def patch_vision_attention(vision_tower: nn.Module, backend: str, attention_classes: tuple[type[nn.Module], ...],
                           rotary: Rotary) -> int:
    """Bind the varlen forward to every module of `attention_classes` in the tower, applying
    `rotary` to queries and keys; returns how many."""
    modules = [m for m in vision_tower.modules() if isinstance(m, attention_classes)]
    for module in modules:
        module.forward = types.MethodType(_vision_varlen_forward, module)
        module.lmms_varlen_backend = backend
        module.lmms_rotary = rotary
    log.info("vision attention: %d modules on the %s varlen kernel", len(modules), backend)
    return len(modules)


def _vision_varlen_forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
    tokens = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(tokens, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = self.lmms_rotary(q, k, cos, sin)
    q, k, v = attention.to_compute_dtype(q, k, v)
    out = attention.varlen_attention(q, k, v, cu_seqlens.to(torch.int32), _max_length(cu_seqlens, max_seqlen, tokens),
                                     self.scaling, causal=False, backend=self.lmms_varlen_backend)
    return self.proj(out.reshape(tokens, -1))


def _max_length(cu_seqlens: torch.Tensor, given, tokens: int) -> int:
    """The longest span, read once per cu_seqlens tensor (every block of a forward shares it). Inside
    a compiled block (parallel.compile) reading it would break the graph: there the kernel gets the
    token count, a valid upper bound (varlen kernels size their grid by it; the extra tiles exit)."""
    if given is not None:
        return int(given)
    if torch.compiler.is_compiling():
        return tokens
    cached = getattr(cu_seqlens, "_lmms_max_length", None)
    if cached is None:
        cached = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        cu_seqlens._lmms_max_length = cached
    return cached
