"""Tensor-core friendly widths for encoder MLPs (Qwen2.5-VL's vision tower).

The vision MLP of Qwen2.5-VL is 1280 -> 3420 -> 1280. 3420 is not a multiple of 128, and for such
shapes cuBLAS falls back to sm80 CUTLASS kernels on Hopper: the vision tower's MLP matmuls ran at
~220 TFLOP/s on an H200 (docs/performance.md, VL profile), a third of what the decoder's get.

`pad_encoder_mlps` binds a forward that multiplies by zero-padded copies of the weights (width
rounded up to a multiple of 128, i.e. 3456), made on the fly in each forward:
  gate / up: extra output rows of zeros (and zero bias) -> the extra columns of gate and up are 0,
  act(0) * 0 = 0 -> the padded hidden columns are 0, and down's extra input columns are zeros.
So outputs are exactly the unpadded ones, gradients reach only the real weights (the pad is not a
parameter), and checkpoints / exports never see a padded shape. The copies are a few MB per block.
"""

from __future__ import annotations

import logging
import types

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

ALIGN = 128


def pad_encoder_mlps(encoder: nn.Module, fused_act: bool = False, align: int = ALIGN) -> int:
    """Bind the padded forward to every gated-SiLU MLP of a Qwen2.5-VL vision tower whose width is
    not a multiple of `align`; returns how many. fused_act: Liger's fused SiLU-mul (CUDA only)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLMLP

    patched = 0
    for module in encoder.modules():
        if isinstance(module, Qwen2_5_VLMLP) and module.gate_proj.out_features % align:
            module.lmms_pad = -module.gate_proj.out_features % align
            module.lmms_fused_act = fused_act
            module.forward = types.MethodType(_padded_gated_mlp_forward, module)
            patched += 1
    if patched:
        log.info("encoder MLPs: %d padded to a multiple of %d for tensor-core kernels", patched, align)
    return patched


def _padded_gated_mlp_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    pad = self.lmms_pad
    gate = F.linear(hidden_states, _pad_rows(self.gate_proj.weight, pad), _pad_bias(self.gate_proj.bias, pad))
    up = F.linear(hidden_states, _pad_rows(self.up_proj.weight, pad), _pad_bias(self.up_proj.bias, pad))
    hidden = _silu_mul(gate, up, self.lmms_fused_act)
    return F.linear(hidden, F.pad(self.down_proj.weight, (0, pad)), self.down_proj.bias)


def _pad_rows(weight: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(weight, (0, 0, 0, pad))


def _pad_bias(bias: torch.Tensor | None, pad: int) -> torch.Tensor | None:
    return None if bias is None else F.pad(bias, (0, pad))


def _silu_mul(gate: torch.Tensor, up: torch.Tensor, fused: bool) -> torch.Tensor:
    if fused:
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction

        return LigerSiLUMulFunction.apply(gate, up)
    return F.silu(gate) * up
