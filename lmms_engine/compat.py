"""Every private API of torch / transformers / liger-kernel / deepspeed that lmms_engine needs, in one
place. Each entry has a test in tests/unit/test_compat.py that fails by name when an upgrade moves
or changes it: upgrade a library, run that file, and fix what it names here. Nothing else in the code
base reaches a library's private names (an underscore module, attribute or method).

Sections: torch, DeepSpeed (imported lazily: it is an optional extra), transformers, liger-kernel,
flash-attn-4 (optional extra), Hydra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the Hydra helper below runs before torch is needed
    import torch
    from torch import nn

# ---------------------------------------------------------------- torch

# Inserted into parameter names by torch's activation checkpoint_wrapper and by torch.compile.
CHECKPOINT_WRAPPER_PREFIX = "_checkpoint_wrapped_module."
COMPILE_WRAPPER_PREFIX = "_orig_mod."


def checkpoint_wrapper(module: nn.Module, preserve_rng_state: bool = False, checkpoint_fn=None) -> nn.Module:
    """torch's activation-checkpointing wrapper (torch.distributed.algorithms._checkpoint): the one
    FSDP2 and DeepSpeed both compose with; its state_dict hooks hide the wrapper's name part.
    checkpoint_fn(module, *args, **kwargs): runs the checkpoint instead of torch's non-reentrant one
    (it then owns preserve_rng_state too)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper as wrap

    if checkpoint_fn is not None:
        return wrap(module, checkpoint_fn=checkpoint_fn)
    return wrap(module, preserve_rng_state=preserve_rng_state)


def is_checkpoint_wrapper(module: nn.Module) -> bool:
    """True for a module that `checkpoint_wrapper` made (torch's private CheckpointWrapper class)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    return isinstance(module, CheckpointWrapper)


def non_persistent_buffer_names(module: nn.Module) -> set[str]:
    """The names of `module`'s own buffers registered with persistent=False (not in its state_dict)."""
    return set(module._non_persistent_buffers_set)


def dcp_set_element(root: dict, path, value) -> None:
    """torch.distributed.checkpoint._traverse.set_element: put `value` at a flattened state-dict
    entry's `path` (what DefaultLoadPlanner.load_bytes does for a non-tensor entry)."""
    from torch.distributed.checkpoint._traverse import set_element

    set_element(root, path, value)


def dynamo_counters():
    """`torch._dynamo.utils.counters`: what dynamo did since the last `torch.compiler.reset()`;
    counters["stats"]["unique_graphs"] counts compiled graphs (first compile + recompiles) and
    counters["graph_break"] maps each graph-break reason to its count."""
    from torch._dynamo.utils import counters

    return counters


def clear_dtensor_caches() -> None:
    """Empty DTensor's module-level caches. Their entries (sharding propagation, redistribute plans
    and planners, mesh topology) hold DeviceMeshes strongly, and through them a finished FSDP2 job's
    process groups and their native threads, past destroy_process_group() and any collection."""
    import torch
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._collective_utils import MeshTopoInfo
    from torch.distributed.tensor._redistribute import _gen_transform_infos, clear_redistribute_planner_cache

    propagator = DTensor._op_dispatcher.sharding_propagator
    propagator.propagate_op_sharding.cache_clear()
    propagator._propagate_tensor_meta_cached.cache_clear()
    torch._C._clear_DTensor_sharding_propagator_cache()
    _gen_transform_infos.cache_clear()
    clear_redistribute_planner_cache()
    MeshTopoInfo.build_from_mesh.cache_clear()


# DefaultLoadPlanner attributes a load_bytes override reads (set in its set_up_planner).
DCP_LOAD_PLANNER_ATTRIBUTES = ("flatten_state_dict", "mappings", "original_state_dict", "state_dict")

# ---------------------------------------------------------------- DeepSpeed


def deepspeed_set_clip_threshold(optimizer, max_norm: float) -> None:
    """A ZeRO optimizer clips by its `clip_grad` attribute (0 = off), read from the config once at
    initialize; setting it is how a per-step threshold reaches DeepSpeed."""
    if not hasattr(optimizer, "clip_grad"):
        raise AttributeError(f"{type(optimizer).__name__} has no clip_grad: DeepSpeed changed how ZeRO clips")
    optimizer.clip_grad = max_norm


def deepspeed_release_gradients(optimizer) -> None:
    """Forget the gradients a ZeRO optimizer holds beyond the parameters' .grad: the reduced
    partitions (`averaged_gradients`), ZeRO-1/2's flat buffers and the CPU-offload buffers."""
    for key in getattr(optimizer, "averaged_gradients", {}):
        optimizer.averaged_gradients[key] = None
    if hasattr(optimizer, "_release_preflattened_grad_buffers"):  # ZeRO-1/2 only
        optimizer._release_preflattened_grad_buffers()
    if getattr(optimizer, "cpu_offload", False) and hasattr(optimizer, "reset_cpu_buffers"):
        optimizer.reset_cpu_buffers()


def deepspeed_zero_optimizer_classes() -> tuple[type, ...]:
    """ZeRO-1/2's and ZeRO-3's optimizer classes (what deepspeed_release_gradients expects)."""
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    return DeepSpeedZeroOptimizer, DeepSpeedZeroOptimizer_Stage3


def deepspeed_checkpoint_classes() -> list[type]:
    """The classes DeepSpeed's ZeRO checkpoint files pickle besides tensors and builtins (their
    module paths are DeepSpeed internals, as pickles record them)."""
    import pathlib

    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address, pathlib.PosixPath]


def deepspeed_checkpoint_engine(engine):
    """The engine's checkpoint engine, whose `load(path, map_location)` reads every checkpoint file
    (an instance attribute `load` set on it shadows the class's pickle-based one)."""
    return engine.checkpoint_engine


def deepspeed_forget_modules(module: nn.Module) -> int:
    """Drop `module` and its submodules from ZeRO-3's module-global forward stack
    (`deepspeed.runtime.zero.parameter_offload.FWD_MODULE_STACK`); returns how many entries went.

    ZeRO-3 pushes the engine's model there when it registers its hooks and never pops it (a forward
    that raised also leaves its submodules there), so the list keeps the model, its partitioned
    parameters' process groups and, through the engine's forward hooks on it, the engine itself."""
    from deepspeed.runtime.zero import parameter_offload

    mine = {id(sub) for sub in module.modules()}
    stack = parameter_offload.FWD_MODULE_STACK
    kept = [entry for entry in stack if id(entry) not in mine]
    dropped = len(stack) - len(kept)
    stack[:] = kept  # in place: DeepSpeed's hooks use this list object
    return dropped


def deepspeed_remove_forward_hooks(engine) -> None:
    """Remove the forward pre / post hooks a DeepSpeedEngine registers on its model (closures over
    the engine; `engine.destroy()` leaves them): the model then no longer keeps the engine alive."""
    for name in ("module_forward_pre_hook", "module_forward_post_hook"):
        handle = getattr(engine, name)
        if handle is not None:
            handle.remove()
            setattr(engine, name, None)


def zero3_partition(param: torch.Tensor) -> torch.Tensor | None:
    """The local partition (`ds_tensor`) of a parameter built under deepspeed.zero.Init, else None."""
    return getattr(param, "ds_tensor", None)


def is_zero3_param(param: torch.Tensor) -> bool:
    """True for a parameter that ZeRO-3 partitions (it carries a `ds_id`)."""
    return hasattr(param, "ds_id")


# ---------------------------------------------------------------- transformers


def qwen2_audio_process_audio():
    """`Qwen2AudioProcessor._process_audio` (transformers 5.x): expands each `<|AUDIO|>` to one token
    per encoder output feature. The omni processor reuses it for its audio part."""
    from transformers import Qwen2AudioProcessor

    return Qwen2AudioProcessor._process_audio


def submodule_from_config(module_class: type[nn.Module], config, dtype: torch.dtype | None = None) -> nn.Module:
    """`PreTrainedModel._from_config`: a (sub-)model built from its config the way transformers builds
    its own composite models (attention implementation and dtype handling included; `dtype` None:
    transformers' default). Under transformers' ZeRO-3 config it builds inside zero.Init and
    initialises the weights one gathered module at a time."""
    return module_class._from_config(config) if dtype is None else module_class._from_config(config, dtype=dtype)


def config_attn_implementation(config) -> str | None:
    """`PreTrainedConfig._attn_implementation`: the attention implementation a config names (the
    setter transformers offers, `set_attn_implementation`, lives on the model, not the config)."""
    return config._attn_implementation


def set_config_attn_implementation(config, name: str | None) -> None:
    """Set what `config_attn_implementation` reads (e.g. sdpa in a config being saved)."""
    config._attn_implementation = name


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


# ---------------------------------------------------------------- flash-attn-4 (optional extra `fa4`)


def fa4_varlen_backward(dout, q, k, v, out, lse, cu_seqlens, max_seqlen: int, scale: float, causal: bool):
    """(dq, dk, dv) of FA4's packed attention: `flash_attn.cute.interface._flash_attn_bwd`, the kernel its
    own autograd.Function calls. kernels/fa4.py needs it as a function of its own: the forward and the
    backward are separate custom ops there (opaque to torch.compile), so FA4's autograd.Function is not used."""
    from flash_attn.cute.interface import _flash_attn_bwd

    dq, dk, dv = _flash_attn_bwd(q, k, v, out, dout, lse, scale, causal, cu_seqlens_q=cu_seqlens,
                                 cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen)
    return dq, dk, dv


# ---- Hydra ----

def hydra_args_parser():
    """The command-line parser `@hydra.main` uses (`hydra._internal.utils.get_args_parser`): it tells
    overrides from Hydra's own flags (--config-name, --multirun, ...)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()
