"""FSDP2 (torch.distributed.fsdp.fully_shard): each shard unit (decoder layer, vision / audio block)
is its own FSDP group, then the root; bf16 compute with fp32 master weights and fp32 reduction.

Frozen weights (LoRA's base) may be stored in bf16 beside fp32 trainable ones in one unit: FSDP2
requires a uniform original dtype among a group's trainable parameters only, and all-gathers
everything in param_dtype (tests/unit/test_lora_strategies.py).

With parallel.sp_degree=N the ranks also form a (dp x sp) layout (parallel/sequence.py). Parameters
are still sharded over ALL ranks, not over dp only: the SP ranks of a group compute different
gradients (one per sequence shard), and the reduce-scatter over every rank sums them across SP and
DP at once; sharding over all ranks also divides parameter and optimizer memory by dp * sp, which is
what long sequences need. The cost is the all-gathers spanning the SP ranks too (same as plain FSDP
over that many ranks)."""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn
from transformers import PreTrainedModel
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from lmms_engine import compat
from lmms_engine.parallel import dist as pdist
from lmms_engine.parallel.base import Strategy, compute_dtype
from lmms_engine.parallel.common import (
    activation_offloader,
    apply_checkpointing_and_compile,
    cast_inputs_before_checkpoint,
    checkpoint_every,
    units_of,
)
from lmms_engine.parallel.sequence import build_sequence_parallel, check_degree

log = logging.getLogger(__name__)


def shard_with_fsdp2(module: nn.Module, unit_types: tuple[type[nn.Module], ...], mesh, mp_policy: MixedPrecisionPolicy,
                     reshard_after_forward: bool, cpu_offload: bool) -> nn.Module:
    """fully_shard every unit, then the root (which keeps embeddings, final norm and lm_head)."""
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    units = [child for _, _, child in units_of(module, unit_types)]
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward, offload_policy=offload)
    # The root's params are needed again right at the start of backward: keep them unsharded.
    fully_shard(module, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=False, offload_policy=offload)
    log.info("fsdp2: %d units + root over %d ranks", len(units), mesh.size())
    return module


def capture_full_state(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Rank 0's full weights and its non-persistent buffers (e.g. RoPE inv_freq), before sharding."""
    state = module.state_dict()
    buffers = {name: buf.clone() for name, buf in module.named_buffers() if name not in state}
    return state, buffers


def materialize_from_rank0(module: nn.Module, device: torch.device, state: dict, buffers: dict, is_main: bool) -> None:
    """Allocate this rank's shards, then receive the weights rank 0 read (one copy in host memory)."""
    module.to_empty(device=device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(module, state if is_main else {}, options=options)
    for name, buf in module.named_buffers():
        if name in buffers or not is_main and _is_non_persistent(module, name):
            if is_main:
                buf.copy_(buffers[name])
            dist.broadcast(buf, src=0)


def _retie_weights(module: nn.Module) -> None:
    """Moving to meta makes new Parameters per module, untying e.g. embed_tokens / lm_head: tie again."""
    for sub in module.modules():
        if isinstance(sub, PreTrainedModel):
            sub.tie_weights()


def _is_non_persistent(module: nn.Module, name: str) -> bool:
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    return attr in compat.non_persistent_buffer_names(owner)


class FSDP2(Strategy):
    """Data parallel with sharded params, grads and optimizer state (torchrun; gloo on CPU)."""

    name = "fsdp2"

    def __init__(self, device: str = "auto", precision: str = "auto", reshard_after_forward: bool = True,
                 cpu_offload: bool = False, activation_checkpointing: bool | int = False,
                 encoder_checkpointing: bool | None = None, compile: bool = False, offload_activations: bool = False,
                 meta_init: bool = True, sp_degree: int = 1):
        super().__init__(device)
        check_degree(sp_degree, sp_degree)  # a positive integer; divisibility of the world at setup
        self.sp_degree = sp_degree
        self.meta_init = meta_init
        self.dtype = compute_dtype(precision, self.device)
        self.reshard_after_forward = reshard_after_forward
        self.cpu_offload = cpu_offload
        self.checkpoint_every = checkpoint_every(activation_checkpointing)
        self.offloader = activation_offloader(offload_activations, self.checkpoint_every)
        self.encoder_checkpointing = encoder_checkpointing
        self.compile = compile
        self.mesh = None

    def setup(self) -> None:
        pdist.init_process_group(self.device)
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.mesh = init_device_mesh(self.device.type, (self.world_size,))
        self.sequence_parallel = build_sequence_parallel(self.rank, self.world_size, self.sp_degree)

    @property
    def build_on_meta(self) -> bool:
        """Ranks other than 0 build the model's structure only; rank 0 reads the weights once."""
        return self.meta_init and self.world_size > 1 and not self.is_main

    def prepare(self, module: nn.Module, shard_units: tuple[type[nn.Module], ...],
                encoder_units: tuple[type[nn.Module], ...] = ()) -> nn.Module:
        apply_checkpointing_and_compile(module, shard_units, self.checkpoint_every, self.compile, encoder_units,
                                        self.encoder_checkpointing, self.offloader)
        if self.dtype != torch.float32:  # what FSDP2 casts, also in the recompute (torch < 2.13)
            cast_inputs_before_checkpoint(module, self.dtype)
        policy = MixedPrecisionPolicy(param_dtype=self.dtype, reduce_dtype=torch.float32)
        if not (self.meta_init and self.world_size > 1):
            module.to("cpu" if self.cpu_offload else self.device)
            return shard_with_fsdp2(module, shard_units, self.mesh, policy, self.reshard_after_forward, self.cpu_offload)
        state, buffers = capture_full_state(module) if self.is_main else ({}, {})
        module.to("meta")
        _retie_weights(module)
        shard_with_fsdp2(module, shard_units, self.mesh, policy, self.reshard_after_forward, self.cpu_offload)
        materialize_from_rank0(module, torch.device("cpu") if self.cpu_offload else self.device, state, buffers, self.is_main)
        return module

    def teardown(self) -> None:
        self.mesh = None  # the mesh holds the process group: freed by pdist.destroy's collection
        self.sequence_parallel = None  # so do the SP / DP groups
        super().teardown()

    def gradient_sync(self, module: nn.Module, enabled: bool):
        # No reduce-scatter on accumulation micro-steps: gradients accumulate unsharded locally.
        module.set_requires_gradient_sync(enabled)
        if not self.reshard_after_forward:
            # Parameters stay unsharded between forward and backward anyway: keep them until the
            # step's last backward too, instead of all-gathering them again for each micro-batch.
            module.set_reshard_after_backward(enabled)
        return contextlib.nullcontext()
