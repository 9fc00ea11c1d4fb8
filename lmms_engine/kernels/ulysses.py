"""Ulysses attention: the decoder's packed attention on sequence shards, through two all-to-alls.

Each SP rank holds q/k/v for its 1/N of the pack and every head. The first all-to-all gives it the
WHOLE pack for 1/N of the heads, so the packed (varlen) kernel runs unchanged with the full pack's
cu_seqlens; the second returns the output to sequence shards with every head.

This module is only the attention wrapper: the kernel patcher registers it (with the padding-free
backend it chose) for the decoder; sharding the decoder's inputs, positions and loss is the strategy's
(parallel/sequence.py). The registered function holds no process group: the SP layout arrives in the
decoder's kwargs (parallel.sequence.ATTENTION_KWARG, set by the decoder's input hook), so transformers'
global registry does not keep the groups alive after the run (parallel/dist.py destroy).
"""

from __future__ import annotations

import functools

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from lmms_engine.kernels import attention
from lmms_engine.parallel.sequence import ATTENTION_KWARG, SequenceParallel, all_to_all


def impl_name(backend: str, degree: int) -> str:
    return f"{attention.impl_name(backend)}_ulysses{degree}"


def register(backend: str, degree: int) -> str:
    """Register `backend` wrapped in Ulysses all-to-alls with transformers; returns its name."""
    name = impl_name(backend, degree)
    inner = functools.partial(attention.packed_attention, backend=backend)
    AttentionInterface.register(name, functools.partial(ulysses_attention, inner=inner))
    AttentionMaskInterface.register(name, attention.no_mask)
    return name


def ulysses_attention(module, query, key, value, attention_mask, *args, inner, **kwargs):
    """query (1, Hq, T/N, D), key/value (1, Hkv, T/N, D) -> output (1, T/N, Hq, D), None."""
    sp: SequenceParallel | None = kwargs.pop(ATTENTION_KWARG, None)
    if sp is None:
        raise RuntimeError("Ulysses attention without the sequence layout: the strategy did not shard this "
                           "decoder (Strategy.shard_sequence(module, decoder_path) before prepare())")
    if key.shape[1] % sp.degree:  # GQA with fewer kv heads than SP ranks: each rank gets whole groups
        key, value = repeat_kv(key, query.shape[1]), repeat_kv(value, query.shape[1])
    # (1, H, T/N, D) -> (1, H/N, T, D): scatter heads, gather sequence.
    q, k, v = (all_to_all(t, scatter_dim=1, gather_dim=2, group=sp.group) for t in (query, key, value))
    out, weights = inner(module, q, k, v, attention_mask, *args, **kwargs)  # (1, T, H/N, D)
    # (1, T, H/N, D) -> (1, T/N, H, D): scatter sequence, gather heads.
    return all_to_all(out, scatter_dim=1, gather_dim=2, group=sp.group), weights


def repeat_kv(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, Hkv, T, D) -> (B, num_heads, T, D): kv head i serves query heads i*g .. i*g+g-1."""
    return x.repeat_interleave(num_heads // x.shape[1], dim=1)
