"""Every private API of torch / transformers / liger-kernel / deepspeed that lmms_engine needs, in one
place. Each entry has a test in tests/unit/test_compat.py that fails by name when an upgrade moves
or changes it: upgrade a library, run that file, and fix what it names here.
"""

from __future__ import annotations

from torch import nn

# ---------------------------------------------------------------- transformers


def qwen2_audio_process_audio():
    """`Qwen2AudioProcessor._process_audio` (transformers 5.x): expands each `<|AUDIO|>` to one token
    per encoder output feature. The omni processor reuses it for its audio part."""
    from transformers import Qwen2AudioProcessor

    return Qwen2AudioProcessor._process_audio


def submodule_from_config(module_class: type[nn.Module], config) -> nn.Module:
    """`PreTrainedModel._from_config`: a sub-model built from its config the way transformers builds
    its own composite models (attention implementation and dtype handling included)."""
    return module_class._from_config(config)


# ---------------------------------------------------------------- liger-kernel


def liger_patch_rms_norm(module: nn.Module, eps: float) -> None:
    """liger-kernel's instance-level RMSNorm patch (`monkey_patch._patch_rms_norm_module`)."""
    from liger_kernel.transformers.monkey_patch import _patch_rms_norm_module

    _patch_rms_norm_module(module, eps=eps)


def liger_patch_swiglu(module: nn.Module) -> None:
    """liger-kernel's instance-level SwiGLU MLP patch (`monkey_patch._patch_swiglu_module`)."""
    from liger_kernel.transformers.monkey_patch import _patch_swiglu_module
    from liger_kernel.transformers.swiglu import LigerSwiGLUMLP

    _patch_swiglu_module(module, LigerSwiGLUMLP)
