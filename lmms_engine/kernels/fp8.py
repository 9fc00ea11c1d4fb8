"""kernels.fp8: FP8 training of the decoder's linear layers with torchao's float8 training.

Each chosen nn.Linear becomes a torchao Float8Linear: its input, weight and output gradient are cast
to float8 (e4m3 forward, e5m2 gradients) with dynamic tensorwise scales, and the three matmuls of
forward and backward run on FP8 tensor cores; weights, optimizer state and everything else stay as
they were (bf16 compute, fp32 masters). Only the decoder layers' projections are converted
(attention q / k / v / o, MLP gate / up / down): not the embeddings, lm_head (its fused
cross-entropy reads the weight directly), norms, or encoder towers. The casts pay only when fused
with their neighbours, so FP8 is meant to run with parallel.compile=true.

Order: after the Liger patches, before activation checkpointing, compile and sharding (the
strategy's prepare), as torchao asks. Under FSDP2 the weights are all-gathered in bf16 and cast
after the gather (torchao's float8 all-gather is left off: it needs a scale precompute after every
optimizer step, and the gather is not the bottleneck at these sizes).
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

# FP8 tensor cores: Ada (8.9), Hopper (9.0) and later.
MIN_CAPABILITY = (8, 9)
# torchao's float8 matmul (torch._scaled_mm) needs both dimensions to be multiples of 16.
ALIGN = 16
SKIPPED_NAMES = ("lm_head", "embed", "visual", "vision", "audio")


def check_fp8_supported(device: torch.device | None = None) -> None:
    """ValueError naming kernels.fp8 when this machine (or `device`) cannot train in FP8."""
    if importlib.util.find_spec("torchao") is None:
        raise ValueError("kernels.fp8=true needs torchao (FP8 training): install it with `uv sync --extra fp8`, "
                         "or set kernels.fp8=false")
    where = _fp8_unsupported_reason(device)
    if where is not None:
        raise ValueError(f"kernels.fp8=true needs a CUDA GPU with FP8 tensor cores (compute capability >= "
                         f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}: Ada, Hopper or newer); {where}: set kernels.fp8=false")


def _fp8_unsupported_reason(device: torch.device | None) -> str | None:
    if device is not None and device.type != "cuda":
        return f"this run's device is {device.type}"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return f"{torch.cuda.get_device_name(device)} has compute capability {capability[0]}.{capability[1]}"
    return None


def is_fp8_candidate(module: nn.Module, fqn: str) -> bool:
    """A decoder projection: an nn.Linear inside a `layers` list, outside lm_head / embeddings /
    encoder towers, with both dimensions multiples of ALIGN."""
    parts = fqn.split(".")
    if "layers" not in parts or any(skip in part for part in parts for skip in SKIPPED_NAMES):
        return False
    return module.in_features % ALIGN == 0 and module.out_features % ALIGN == 0


def convert_decoder_linears(decoder: nn.Module) -> int:
    """Swap the decoder's eligible nn.Linear layers for torchao Float8Linear; returns how many."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    before = _count_linears(decoder)
    # pad_inner_dim: the weight-gradient matmul's inner dimension is the pack's token count, which is
    # rarely a multiple of 16 (torch._scaled_mm's constraint): torchao zero-pads it (exact).
    config = Float8LinearConfig(pad_inner_dim=True)
    convert_to_float8_training(decoder, module_filter_fn=is_fp8_candidate, config=config)
    converted = before - _count_linears(decoder)
    if converted == 0:
        raise ValueError("kernels.fp8=true found no decoder linear layer to convert (dimensions must be multiples "
                         f"of {ALIGN}); set kernels.fp8=false for this model")
    log.info("fp8: %d decoder linear layers on torchao Float8Linear (tensorwise dynamic scaling)", converted)
    return converted


def _count_linears(module: nn.Module) -> int:
    """Plain nn.Linear modules (Float8Linear subclasses nn.Linear: counted by exact type)."""
    return sum(type(m) is nn.Linear for m in module.modules())
