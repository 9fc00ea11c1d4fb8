"""Ulysses sequence parallelism, owned here: the ranks of one SP group train on the same pack, each on
a contiguous 1/N slice of it.

    every SP rank        the full pack (padded to a multiple of N: Strategy.sequence_shards), media,
                         cu_seqlens, positions
    decoder input        embeddings (text + scattered media features) and positions sliced to the shard
                         (SequenceParallel.shard_module, called through Strategy.shard_sequence)
    each attention       all-to-all (seq/N, heads) -> (seq, heads/N); the packed varlen kernel over the
                         FULL pack's cu_seqlens; all-to-all back (kernels/ulysses.py, the attention
                         wrapper the kernel patcher registers; it gets this layout from the decoder's
                         kwargs, ATTENTION_KWARG)
    loss                 the shard's labels (shifted per sample at collate time, so before slicing)

Gradients of the (replicated) parameters differ per SP rank; FSDP2 shards over all dp x sp ranks, so
its reduce-scatter sums them over SP and DP alike (parallel/fsdp2.py). Counts that describe the pack
(label tokens, real tokens, FLOPs) are summed over the data-parallel ranks only (Strategy.all_reduce_data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import logging
import operator

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

# The decoder's keyword argument that carries the SequenceParallel to every attention call (set by the
# decoder's input hook, read by kernels/ulysses.py): transformers passes the decoder's extra kwargs on to
# the attention function, and the registered function itself holds no process group.
ATTENTION_KWARG = "lmms_sequence_parallel"


@dataclass(frozen=True)
class SequenceParallel:
    """This rank's place in the (dp x sp) layout: ranks r*N .. r*N+N-1 form SP group r (adjacent ranks,
    so the all-to-alls stay within a node)."""

    degree: int  # N: ranks sharing one pack
    rank: int  # this rank's shard index within its SP group
    group: Any  # the SP group's ProcessGroup (all-to-alls)
    data_rank: int  # this SP group's index among the data-parallel replicas
    data_world_size: int  # number of SP groups (data-parallel degree)
    data_group: Any  # the ranks with this SP index across the SP groups (sums of per-pack counts)

    def shard(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's contiguous 1/N slice of `tensor` along `dim` (its length is a multiple of N)."""
        length = tensor.shape[dim]
        assert length % self.degree == 0, f"sequence of {length} tokens is not a multiple of sp_degree {self.degree}"
        size = length // self.degree
        return tensor.narrow(dim, self.rank * size, size)

    def shard_module(self, module: nn.Module, decoder_path: str) -> None:
        """Train `module` (a CausalLMWithLoss: `.lm`, `.loss_fn`) on this rank's shard of each pack:
        the decoder body at `decoder_path` of `module.lm` gets its token inputs and positions sliced
        (and this layout for its Ulysses attention), and the loss this shard's labels."""
        decoder = operator.attrgetter(decoder_path)(module.lm)
        text = decoder.config.get_text_config()
        check_heads(self.degree, text.num_attention_heads, text.num_key_value_heads)
        decoder.register_forward_pre_hook(shard_decoder_inputs(self), with_kwargs=True)
        module.loss_fn = sharded_loss(module.loss_fn, self)
        log.info("sequence parallelism: %d shards per pack (%d of %d query heads per rank in Ulysses attention)",
                 self.degree, text.num_attention_heads // self.degree, text.num_attention_heads)


def build_sequence_parallel(rank: int, world_size: int, degree: int) -> SequenceParallel | None:
    """This rank's SP and DP groups of the (dp x sp) layout; None for degree 1 (no extra groups).

    Plain dist.new_group calls (every rank creates every group, in the same order): a DeviceMesh
    would do the same, but its slices leave a process group referenced past destroy_process_group,
    whose threads then outlive the run (parallel/dist.py destroy)."""
    check_degree(degree, world_size)
    if degree == 1:
        return None
    replicas = world_size // degree
    sp_groups = [dist.new_group(list(range(r * degree, (r + 1) * degree))) for r in range(replicas)]
    dp_groups = [dist.new_group(list(range(j, world_size, degree))) for j in range(degree)]
    data_rank, sp_rank = divmod(rank, degree)
    return SequenceParallel(degree=degree, rank=sp_rank, group=sp_groups[data_rank], data_rank=data_rank,
                            data_world_size=replicas, data_group=dp_groups[sp_rank])


def check_degree(degree: int, world_size: int) -> None:
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
        raise ValueError(f"parallel.sp_degree={degree!r} must be a positive integer (1: no sequence parallelism)")
    if world_size % degree:
        raise ValueError(f"parallel.sp_degree={degree} does not divide the {world_size} ranks of this job; "
                         f"launch a multiple of {degree} processes or lower parallel.sp_degree")


def check_heads(degree: int, num_heads: int, num_kv_heads: int) -> None:
    """Ulysses gives each SP rank num_heads / N query heads; kv heads not divisible by N are repeated
    up to the query heads first (more all-to-all traffic, same result)."""
    if degree > 1 and num_heads % degree:
        raise ValueError(f"parallel.sp_degree={degree} must divide the model's attention heads "
                         f"(num_attention_heads={num_heads}, num_key_value_heads={num_kv_heads}); "
                         f"choose an sp_degree that divides {num_heads}")


def all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group) -> torch.Tensor:
    """Split `x` into N chunks along scatter_dim, send chunk j to SP rank j, and concatenate what
    the ranks sent, in rank order, along gather_dim. Differentiable (the backward is the reverse)."""
    return _AllToAll.apply(x, scatter_dim, gather_dim, group)


class _AllToAll(torch.autograd.Function):
    """torch.distributed.all_to_all_single with its backward: the all-to-all with the dims swapped."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scatter_dim: int, gather_dim: int, group) -> torch.Tensor:
        ctx.dims, ctx.group = (scatter_dim, gather_dim), group
        return _all_to_all(x, scatter_dim, gather_dim, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, gather_dim, scatter_dim, ctx.group), None, None, None


def _all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group) -> torch.Tensor:
    n = dist.get_world_size(group)
    send = torch.stack([chunk.contiguous() for chunk in x.chunk(n, dim=scatter_dim)])
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    return torch.cat(received.unbind(0), dim=gather_dim)


def shard_decoder_inputs(sp: SequenceParallel):
    """A forward pre-hook for the decoder body: its token inputs (input_ids or inputs_embeds, B=1 packed
    row) and position ids (1-D or mrope, sequence last) sliced to this rank's shard, and `sp` passed on to
    the attention (ATTENTION_KWARG). Everything before the decoder (embedding, media features, mrope
    positions) saw the whole pack."""

    def hook(module: nn.Module, args: tuple, kwargs: dict):
        assert not args, "the decoder is called with keyword inputs (models/encoders.py)"
        for key, dim in (("input_ids", 1), ("inputs_embeds", 1), ("position_ids", -1)):
            if kwargs.get(key) is not None:
                kwargs[key] = sp.shard(kwargs[key], dim)
        kwargs[ATTENTION_KWARG] = sp
        return args, kwargs

    return hook


def sharded_loss(loss_fn, sp: SequenceParallel):
    """loss_fn(hidden, weight, labels) on this rank's hidden states and its slice of the labels."""

    def loss(hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return loss_fn(hidden, lm_head_weight, sp.shard(labels, -1))

    return loss
