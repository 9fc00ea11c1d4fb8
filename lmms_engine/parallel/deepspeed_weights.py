"""What the DeepSpeed strategy does to the model's weights: the lm_head weight registered for ZeRO-3's
gathering, the cast to the compute dtype that keeps the fp32 values for DeepSpeed's masters, and the
full fp32 state dict gathered for the HF export (parallel/deepspeed.py calls these)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from lmms_engine import compat
from lmms_engine.names import unwrapped_name
from lmms_engine.parallel.deepspeed_config import import_deepspeed


def register_loss_head(module: nn.Module) -> None:
    """Let ZeRO-3 gather the output-embedding (lm_head) weight for `module`'s own forward.

    The trained module hands the weight to a fused linear cross-entropy instead of calling
    lm_head.forward, so DeepSpeed's per-module hooks do not gather it for lm_head: registered as
    an external parameter of the root module it is gathered for the root's forward and backward.
    Tied or not: the weight the loss reads. (DeepSpeed 0.19's engine also discovers such a read
    during an eager forward and registers it then; registering up front does not depend on that
    discovery, which is off while torch.compile traces.)
    """
    deepspeed = import_deepspeed()
    deepspeed.zero.register_external_parameter(module, output_embedding_weight(module))


def output_embedding_weight(module: nn.Module) -> nn.Parameter:
    """The lm_head weight of the outermost HF model inside `module`."""
    for sub in module.modules():
        if isinstance(sub, PreTrainedModel) and sub.get_output_embeddings() is not None:
            return sub.get_output_embeddings().weight
    raise AssertionError(f"{type(module).__name__} holds no HF model with output embeddings")


@dataclass
class Fp32Masters:
    """The trainable parameters' fp32 values before the cast, by name: whole tensors, and the local
    partitions of ZeRO-3 parameters built under zero.Init."""

    whole: dict[str, torch.Tensor]
    partitions: dict[str, torch.Tensor]


def cast_keeping_fp32(module: nn.Module, dtype: torch.dtype) -> Fp32Masters:
    """Cast `module`'s floating parameters to `dtype`, keeping the trainable ones' fp32 values.

    Whole parameters: DeepSpeed would cast them the same way (`p.data = p.data.to(dtype)`); the
    fp32 tensors are kept by reference, no copy. ZeRO-3 parameters built under zero.Init: DeepSpeed
    takes them as they are, so their local partition (`ds_tensor`) is cast here and its fp32 values
    kept in CPU memory (off the device while DeepSpeed allocates its own fp32 masters).
    """
    whole, partitions = {}, {}
    for name, param in module.named_parameters():
        if not param.is_floating_point() or param.dtype == dtype:
            continue
        partition = compat.zero3_partition(param)
        if partition is not None:
            fp32 = partition.data
            partition.data = fp32.to(dtype)
            param.data = torch.empty(0, dtype=dtype, device=param.device)  # the gathered dtype follows ds_tensor
            if param.requires_grad:
                partitions[name] = fp32.cpu()  # the old tensor: ds_tensor now holds a new one
        else:
            if param.requires_grad:
                whole[name] = param.data
            param.data = param.data.to(dtype)
    return Fp32Masters(whole=whole, partitions=partitions)


def restore_fp32_masters(module: nn.Module, masters: Fp32Masters) -> None:
    """Set DeepSpeed's fp32 master weights to the values before the cast to bf16.

    DeepSpeed copies its fp32 masters from the bf16 parameters, so the masters would start rounded
    to 8 mantissa bits: small early updates then round away in every bf16 copy, and training drifts
    from FSDP2's (whose masters are the fp32 model). Local copies only (each rank writes its own
    partition): no collectives.
    """
    deepspeed = import_deepspeed()
    for name, param in module.named_parameters():
        if name in masters.partitions:
            deepspeed.utils.safe_set_local_fp32_param(param, masters.partitions[name])
        elif name in masters.whole:
            deepspeed.utils.safe_set_full_fp32_param(param, masters.whole[name].float())


def gather_full_state_dict(module: nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """Each parameter (and persistent buffer) whole, in fp32 on CPU where `keep`, else dropped.

    Parameters are gathered one at a time, in the same order on every rank, so peak memory is one
    full parameter beyond the CPU copy. Tied parameters are gathered once and listed under each name.
    """
    tensors = _named_tensors(module)
    names = list(module.state_dict(keep_vars=True).keys())  # checkpoint_wrapper's hook strips its prefix here
    gathered: dict[int, torch.Tensor] = {}
    state = {}
    for name in names:
        tensor = tensors[name]
        if id(tensor) not in gathered:
            full = _full_fp32(tensor) if isinstance(tensor, nn.Parameter) else tensor.detach()
            gathered[id(tensor)] = full.cpu() if keep else None
        if keep:
            state[name] = gathered[id(tensor)]
    return state


def _named_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    named = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    # Named as the module's state_dict (checkpoint_wrapper's part hidden, the training module's `lm.` kept).
    return {unwrapped_name(name, prefixes=()): tensor for name, tensor in named}


def _full_fp32(param: nn.Parameter) -> torch.Tensor:
    """The whole fp32 master copy of a trainable parameter; frozen ones from the module itself."""
    deepspeed = import_deepspeed()
    full = deepspeed.utils.safe_get_full_fp32_param(param)  # collective; None for frozen params
    if full is not None:
        return full
    if compat.is_zero3_param(param):  # a frozen ZeRO-3 parameter: only partitioned in the module
        with deepspeed.zero.GatheredParameters([param]):
            return param.detach().float().clone()
    return param.detach().float()
