"""Attention over packed (padding-free) batches: one token stream, documents delimited by cu_seqlens.

The model's attention layers receive `cu_seq_lens_q/k` and `max_length_q/k` as keyword arguments that
the training step computes once per batch (see `varlen_kwargs`) and passes to the model's forward;
transformers forwards them unchanged to every layer's attention function. Each backend registers
under its own name in transformers' AttentionInterface, so no model code is rewritten.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from lmms_engine.kernels import fa4
from lmms_engine.options import BACKENDS

log = logging.getLogger(__name__)

# `auto` tries these in order and takes the first available on the device.
AUTO_ORDER_CUDA = ("fa4", "flash_attn", "torch_varlen", "flex", "sdpa")
# Varlen kernels that also run bidirectional (encoders: kernels/encoder_attention.py), fastest first.
BIDIRECTIONAL_BACKENDS = ("fa4", "flash_attn", "torch_varlen")


def impl_name(backend: str) -> str:
    """The name a backend is registered under in transformers' AttentionInterface."""
    return f"lmms_{backend}"


def is_available(backend: str, device: torch.device, head_dim: int | None = None) -> bool:
    return unavailable_reason(backend, device, head_dim) is None


def unavailable_reason(backend: str, device: torch.device, head_dim: int | None = None) -> str | None:
    """Why `backend` cannot run on `device` (None: it can), for heads of `head_dim` if given."""
    if backend == "fa4":
        return fa4.unavailable_reason(device, head_dim)
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose auto or one of {BACKENDS}")
    if backend != "sdpa" and device.type != "cuda":
        return f"it needs a CUDA device, and this run's device is {device.type}"
    if not _installed(backend):
        return "it is not installed" + (" (uv sync --extra flash-attn)" if backend == "flash_attn" else " in this torch")
    return None


def _installed(backend: str) -> bool:
    if backend == "sdpa":
        return True
    if backend == "flash_attn":  # flash-attn 2's extension (flash-attn-4 shares the `flash_attn` namespace)
        return importlib.util.find_spec("flash_attn_2_cuda") is not None
    if backend == "torch_varlen":
        return _torch_varlen() is not None
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None  # flex


def resolve_backend(name: str, device: torch.device, head_dim: int | None = None) -> str:
    """`auto` -> the fastest backend available on `device` (for heads of `head_dim`, when known); a
    named one is checked for availability."""
    if name == "auto":
        order = AUTO_ORDER_CUDA if device.type == "cuda" else ("sdpa",)
        return next(b for b in order if is_available(b, device, head_dim))
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose auto or one of {BACKENDS}")
    reason = unavailable_reason(name, device, head_dim)
    if reason is not None:
        raise ValueError(f"kernels.attn_backend={name} cannot run here: {reason}; use kernels.attn_backend=auto")
    return name


def register(backend: str) -> str:
    """Register the backend's attention function (and a no-op mask builder) with transformers."""
    name = impl_name(backend)
    AttentionInterface.register(name, functools.partial(packed_attention, backend=backend))
    # Documents are delimited by cu_seqlens: the model must not build a (T x T) mask.
    AttentionMaskInterface.register(name, no_mask)
    return name


def varlen_kwargs(cu_seqlens: torch.Tensor, max_seqlen: int, backend: str) -> dict:
    """Per-batch keyword arguments for the model's forward (computed once, used by every layer)."""
    kwargs = {
        "cu_seq_lens_q": cu_seqlens,
        "cu_seq_lens_k": cu_seqlens,
        "max_length_q": max_seqlen,
        "max_length_k": max_seqlen,
    }
    if backend == "flex":
        kwargs["lmms_block_mask"] = document_block_mask(cu_seqlens)
    if backend == "sdpa":
        # Python ints for the per-document loop: read from the device once per batch, not per layer.
        kwargs["lmms_doc_bounds"] = cu_seqlens.tolist()
    return kwargs


def no_mask(*args, **kwargs):
    """The mask builder of the packed backends: documents are delimited by cu_seqlens, no (T x T) mask."""
    return None


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, *, backend, **kwargs):
    """query (1, Hq, T, D), key/value (1, Hkv, T, D) -> output (1, T, Hq, D), None."""
    if "cu_seq_lens_q" not in kwargs:
        raise RuntimeError(
            "packed attention was called without cu_seq_lens_q: batches must be packed or unpadded "
            "(data.packing=true or kernels.use_rmpad=true) when a varlen backend is active"
        )
    assert query.shape[0] == 1, "packed batches have batch size 1"
    if dropout and module.training:
        raise ValueError("attention dropout is not supported by the packed attention backends")
    cu, max_len = kwargs["cu_seq_lens_q"], kwargs["max_length_q"]
    query, key, value = to_compute_dtype(query, key, value)
    if backend == "flex":
        out = _flex(query, key, value, kwargs["lmms_block_mask"], scaling)
        return out.transpose(1, 2), None
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D)
    if backend == "sdpa" and torch.compiler.is_compiling():
        out = sdpa_document_masked(q, k, v, cu, scaling)  # tensors only: no recompile per pack layout
    elif backend == "sdpa":
        out = _sdpa_per_document(q, k, v, kwargs["lmms_doc_bounds"], scaling)
    else:
        out = varlen_attention(q, k, v, cu, max_len, scaling, causal=True, backend=backend)
    return out.unsqueeze(0), None


def varlen_attention(q, k, v, cu_seqlens, max_len: int, scaling, *, causal: bool, backend: str) -> torch.Tensor:
    """(T, H, D) tensors of packed sequences delimited by cu_seqlens (int32) -> (T, Hq, D), with the
    fa4, torch_varlen or flash_attn kernel; causal or bidirectional within each sequence."""
    if backend == "fa4":
        return fa4.fa4_varlen_attention(q, k, v, cu_seqlens, max_len, scaling, causal)
    if backend == "torch_varlen":
        return _torch_varlen_attention(q, k, v, cu_seqlens, max_len, scaling, causal)
    if backend == "flash_attn":
        return _flash_attn_varlen(q, k, v, cu_seqlens, max_len, scaling, causal)
    if backend == "sdpa" and torch.compiler.is_compiling():  # no .tolist() inside a compiled block
        return sdpa_document_masked(q, k, v, cu_seqlens, scaling, causal)
    if backend == "sdpa":  # the reference (CPU): one call per sequence
        return _sdpa_per_document(q, k, v, cu_seqlens.tolist(), scaling, causal)
    raise ValueError(f"no varlen kernel for backend {backend!r}; choose one of {BIDIRECTIONAL_BACKENDS} or sdpa")


def to_compute_dtype(*tensors: torch.Tensor):
    """RoPE in fp32 (HF computes cos/sin in fp32) upcasts q/k; flash kernels take bf16/fp16 only."""
    dtype = tensors[-1].dtype  # value comes straight from a projection: the compute dtype
    if torch.is_autocast_enabled(tensors[0].device.type):
        dtype = torch.get_autocast_dtype(tensors[0].device.type)
    return tuple(t.to(dtype) for t in tensors)


def _repeat_kv_heads(k: torch.Tensor, v: torch.Tensor, n_q_heads: int):
    """(T, Hkv, D) -> (T, Hq, D): each kv head serves n_q_heads // Hkv consecutive query heads."""
    groups = n_q_heads // k.shape[1]
    if groups == 1:
        return k, v
    return k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)


def _sdpa_per_document(q, k, v, bounds: list[int], scaling, causal: bool = True):
    """Correct everywhere (CPU included): SDPA on each document separately."""
    k, v = _repeat_kv_heads(k, v, q.shape[1])
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # (H, n, D)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scaling).transpose(0, 1))
    return torch.cat(outs, dim=0)


def sdpa_document_masked(q, k, v, cu_seqlens: torch.Tensor, scaling, causal: bool = True) -> torch.Tensor:
    """The sdpa reference as one call with a (T x T) same-document mask built from cu_seqlens: what a
    compiled layer runs on CPU, where the per-document loop over Python bounds would make dynamo
    recompile for every new pack layout. Same result; quadratic memory (CPU test shapes only)."""
    k, v = _repeat_kv_heads(k, v, q.shape[1])
    positions = torch.arange(q.shape[0], device=q.device)
    doc = torch.searchsorted(cu_seqlens[1:].to(torch.long), positions, right=True)
    mask = doc[:, None] == doc[None, :]
    if causal:
        mask = mask & (positions[None, :] <= positions[:, None])
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=scaling)
    return out.transpose(0, 1)


@functools.cache
def _torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@functools.cache
def _torch_varlen_takes_gqa() -> bool:
    return "enable_gqa" in inspect.signature(_torch_varlen()).parameters


def _torch_varlen_attention(q, k, v, cu_seqlens, max_len, scaling, causal=True):
    varlen_attn = _torch_varlen()
    if _torch_varlen_takes_gqa() and k.shape[1] != q.shape[1]:
        extra = {"enable_gqa": True}
    else:
        k, v = _repeat_kv_heads(k, v, q.shape[1])
        extra = {}
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, scale=scaling,
                       window_size=(-1, 0) if causal else (-1, -1), **extra)


def _flash_attn_varlen(q, k, v, cu_seqlens, max_len, scaling, causal=True):
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, softmax_scale=scaling, causal=causal)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def document_block_mask(cu_seqlens: torch.Tensor):
    """A FlexAttention block mask: causal within each document, nothing across documents."""
    from torch.nn.attention.flex_attention import create_block_mask

    total = int(cu_seqlens[-1])
    positions = torch.arange(total, device=cu_seqlens.device)
    doc_ids = torch.searchsorted(cu_seqlens[1:].to(torch.long), positions, right=True)

    def causal_same_document(b, h, q_idx, kv_idx):
        return (doc_ids[q_idx] == doc_ids[kv_idx]) & (kv_idx <= q_idx)

    return create_block_mask(causal_same_document, None, None, total, total, device=cu_seqlens.device)


def _flex(query, key, value, block_mask, scaling):
    enable_gqa = key.shape[1] != query.shape[1]
    return _compiled_flex()(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=enable_gqa)
