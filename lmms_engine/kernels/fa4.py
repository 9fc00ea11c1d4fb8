"""kernels.attn_backend=fa4: FlashAttention-4 (the `flash-attn-4` package, CuTe DSL kernels that
JIT-compile on first use) for packed sequences on Hopper and Blackwell GPUs.

Its varlen kernel takes q (T, Hq, D) and k / v (T, Hkv, D) with the documents' cu_seqlens: GQA is
native (no repeated kv heads) and causal masking is per document. On one H200 it runs packed causal
attention at about twice torch's varlen kernel (docs/performance.md).

The kernel pair is wrapped as two torch custom ops (`lmms::fa4_varlen_fwd` / `lmms::fa4_varlen_bwd`)
with fake (meta) implementations and a registered autograd formula, so a compiled decoder layer
(parallel.compile) keeps attention as one opaque node of its graph, with no graph break, and inductor
fuses the norms, rope and SwiGLU around it. Eager runs go through the same ops.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from lmms_engine import compat

# FA4's kernels: Hopper (sm90) and Blackwell (sm100 / sm110 / sm120).
SUPPORTED_MAJOR = (9, 10, 11, 12)
# Head dims whose forward and backward match torch's varlen kernel on an H200 (tests/gpu/test_fa4_gpu.py).
# flash-attn-4 4.0.0b40's SM90 backward returns a wrong dq at head dim 80 (Qwen2.5-VL's vision tower:
# 107% relative error against fp32), so other dims keep the next backend.
VERIFIED_HEAD_DIMS = (64, 128)
INSTALL_HINT = "install it with `uv sync --extra fa4` (flash-attn-4, CUDA 13 wheels)"


def unavailable_reason(device: torch.device, head_dim: int | None = None) -> str | None:
    """Why FA4 cannot run on `device` (None: it can), for attention heads of `head_dim` if given."""
    if head_dim is not None and head_dim not in VERIFIED_HEAD_DIMS:
        return f"head dim {head_dim} is not one FA4 is verified for ({', '.join(map(str, VERIFIED_HEAD_DIMS))})"
    if device.type != "cuda":
        return f"this run's device is {device.type}; FA4 needs a Hopper or Blackwell GPU"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    major, minor = torch.cuda.get_device_capability(device)
    if major not in SUPPORTED_MAJOR:
        return (f"{torch.cuda.get_device_name(device)} has compute capability {major}.{minor}; FA4 runs on "
                "Hopper (9.x) and Blackwell (10.x / 12.x)")
    return _import_error()


@functools.cache
def _import_error() -> str | None:
    if importlib.util.find_spec("flash_attn") is None or importlib.util.find_spec("flash_attn.cute") is None:
        return f"the flash-attn-4 package is not installed: {INSTALL_HINT}"
    try:
        import flash_attn.cute  # noqa: F401  (pulls in the CuTe DSL and its CUDA libraries)
    except Exception as err:  # a broken install: say what failed rather than fail at the first layer
        return f"flash_attn.cute does not import ({type(err).__name__}: {err}); {INSTALL_HINT}"
    return None


@torch.library.custom_op("lmms::fa4_varlen_fwd", mutates_args=())
def fa4_varlen_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                   scale: float, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (T, Hq, D), lse (Hq, T) fp32) of packed attention within each cu_seqlens span."""
    from flash_attn.cute import flash_attn_varlen_func

    out, lse = flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
                                      max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen, softmax_scale=scale,
                                      causal=causal, return_lse=True)
    return out, lse


@fa4_varlen_fwd.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, scale, causal):
    out = q.new_empty(q.shape[:-1] + v.shape[-1:])
    return out, q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@torch.library.custom_op("lmms::fa4_varlen_bwd", mutates_args=())
def fa4_varlen_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float,
                   causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of fa4_varlen_fwd, shaped like q, k, v."""
    return compat.fa4_varlen_backward(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale, causal)


@fa4_varlen_bwd.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale, causal):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, scale, causal = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.max_seqlen, ctx.scale, ctx.causal = max_seqlen, scale, causal


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = fa4_varlen_bwd(dout.contiguous(), q, k, v, out, lse, cu_seqlens, ctx.max_seqlen, ctx.scale,
                                ctx.causal)
    return dq, dk, dv, None, None, None, None


fa4_varlen_fwd.register_autograd(_backward, setup_context=_setup_context)


def fa4_varlen_attention(q, k, v, cu_seqlens, max_len: int, scaling: float | None, causal: bool) -> torch.Tensor:
    """(T, Hq, D) output of packed attention; q (T, Hq, D), k / v (T, Hkv, D) with Hq % Hkv == 0."""
    assert q.shape[-1] in VERIFIED_HEAD_DIMS, f"fa4 chosen for head dim {q.shape[-1]}: see VERIFIED_HEAD_DIMS"
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    out, _ = fa4_varlen_fwd(q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens.to(torch.int32), max_len,
                            float(scale), causal)
    return out
