"""Training FLOPs of a decoder-only transformer, for MFU.

FLOPs of one optimizer step = 6 * N * tokens + 6 * L * d_attn * sum(len_i^2) / 2 * 2
  - 6 * N * tokens: forward (2) + backward (4) multiply-adds of every matmul weight; N counts the
    decoder's projection and MLP weights and the lm_head (vocab x hidden), but not the input
    embedding (a lookup, no matmul).
  - attention scores and values: per layer and document of length n, Q@K^T and P@V cost
    2 * 2 * n^2 * d_attn forward when non-causal; causal does half (n^2 * 2 * d_attn), and backward
    doubles forward, so fwd+bwd = 6 * d_attn * n^2 per layer (d_attn = heads * head_dim).
Packed batches sum n^2 over the documents of each pack, not over the pack length.
Peak: 989 TFLOP/s, the dense bf16 peak of an H100 / H200 SXM.
"""

from __future__ import annotations

from collections.abc import Iterable

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}


def matmul_params(config) -> int:
    """Weights that take part in matmuls: decoder layers + lm_head (not the embedding lookup)."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = _head_dim(config)
    q = h * config.num_attention_heads * head_dim
    kv = 2 * h * config.num_key_value_heads * head_dim
    o = config.num_attention_heads * head_dim * h
    mlp = 3 * h * inter
    return layers * (q + kv + o + mlp) + config.vocab_size * h


def attention_dim(config) -> int:
    head_dim = _head_dim(config)
    return config.num_attention_heads * head_dim


def train_flops(config, doc_lengths: Iterable[int]) -> float:
    """FLOPs of forward + backward over documents of the given lengths (causal attention)."""
    lengths = list(doc_lengths)
    tokens = sum(lengths)
    squares = sum(n * n for n in lengths)
    return 6.0 * matmul_params(config) * tokens + 6.0 * config.num_hidden_layers * attention_dim(config) * squares


def peak_flops(device_name: str) -> float | None:
    """The bf16 dense peak for a known accelerator name, else None (MFU is then reported as null)."""
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None


def _head_dim(config) -> int:
    # Qwen2 configs may leave head_dim unset (None) and derive it from hidden_size.
    explicit = config.to_dict().get("head_dim")
    return explicit or config.hidden_size // config.num_attention_heads
