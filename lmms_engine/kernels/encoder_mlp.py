"""Tensor-core friendly widths for encoder MLPs (e.g. Qwen2.5-VL's and Qwen3-VL's vision towers).

The vision MLP of Qwen2.5-VL is 1280 -> 3420 -> 1280, Qwen3-VL-8B's 1152 -> 4304 -> 1152. Neither
width is a multiple of 128, and for such shapes cuBLAS falls back to sm80 CUTLASS kernels on
Hopper: the Qwen2.5-VL vision tower's MLP matmuls ran at ~220 TFLOP/s on an H200
(docs/performance.md, VL profile), a third of what the decoder's get.

`pad_encoder_mlps` binds a forward that multiplies by zero-padded copies of the weights (width
rounded up to a multiple of 128: 3456, 4352), made on the fly in each forward, to the MLP classes a
family's encoder names (`PaddableMlp`), by their layout:
  gated (SiLU, gate / up / down; Qwen2.5-VL's): extra output rows of zeros (and zero bias) -> the
    extra columns of gate and up are 0, act(0) * 0 = 0, and down's extra input columns are zeros;
  plain (linear_fc1 -> act -> linear_fc2; Qwen3-VL's): fc1's extra rows and bias are zeros, act(0) = 0
    (checked: other activations are left unpadded), and fc2's extra input columns are zeros.
So outputs are exactly the unpadded ones, gradients reach only the real weights (the pad is not a
parameter), and checkpoints / exports never see a padded shape. The copies are a few MB per block.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

ALIGN = 128


@dataclass(frozen=True)
class PaddableMlp:
    """An encoder MLP class that may run padded, and its layout."""

    module_class: type[nn.Module]
    gated: bool  # gate_proj / up_proj / down_proj around SiLU-mul; else linear_fc1 -> act_fn -> linear_fc2


def pad_encoder_mlps(encoder: nn.Module, mlps: Sequence[PaddableMlp], fused_act: bool = False,
                     align: int = ALIGN) -> int:
    """Bind the padded forward to every MLP of the classes `mlps` names whose width is not a
    multiple of `align`; returns how many. fused_act: Liger's fused SiLU-mul for the gated ones
    (CUDA only)."""
    patched = 0
    for module in encoder.modules():
        forward, width = _padded_forward_of(module, mlps)
        if forward is not None and width % align:
            module.lmms_pad = -width % align
            module.lmms_fused_act = fused_act
            module.forward = types.MethodType(forward, module)
            patched += 1
    if patched:
        log.info("encoder MLPs: %d padded to a multiple of %d for tensor-core kernels", patched, align)
    return patched


def _padded_forward_of(module: nn.Module, mlps: Sequence[PaddableMlp]):
    """(the padded forward for this kind of MLP, its width), or (None, 0) for other modules."""
    mlp = next((mlp for mlp in mlps if isinstance(module, mlp.module_class)), None)
    if mlp is None:
        return None, 0
    if mlp.gated:
        return _padded_gated_mlp_forward, module.gate_proj.out_features
    # Exact only if the activation maps the zero pad to zero (GELU, SiLU do); otherwise left as is.
    if module.act_fn(torch.zeros(1)).item() == 0:
        return _padded_plain_mlp_forward, module.linear_fc1.out_features
    return None, 0


def _padded_gated_mlp_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    pad = self.lmms_pad
    gate = F.linear(hidden_states, _pad_rows(self.gate_proj.weight, pad), _pad_bias(self.gate_proj.bias, pad))
    up = F.linear(hidden_states, _pad_rows(self.up_proj.weight, pad), _pad_bias(self.up_proj.bias, pad))
    hidden = _silu_mul(gate, up, self.lmms_fused_act)
    return F.linear(hidden, F.pad(self.down_proj.weight, (0, pad)), self.down_proj.bias)


def _padded_plain_mlp_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    pad, fc1, fc2 = self.lmms_pad, self.linear_fc1, self.linear_fc2
    hidden = self.act_fn(F.linear(hidden_states, _pad_rows(fc1.weight, pad), _pad_bias(fc1.bias, pad)))
    return F.linear(hidden, F.pad(fc2.weight, (0, pad)), fc2.bias)


def _pad_rows(weight: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(weight, (0, 0, 0, pad))


def _pad_bias(bias: torch.Tensor | None, pad: int) -> torch.Tensor | None:
    return None if bias is None else F.pad(bias, (0, pad))


def _silu_mul(gate: torch.Tensor, up: torch.Tensor, fused: bool) -> torch.Tensor:
    if fused:
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction

        return LigerSiLUMulFunction.apply(gate, up)
    return F.silu(gate) * up
