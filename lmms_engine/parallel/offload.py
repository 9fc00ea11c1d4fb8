"""parallel.offload_activations: the checkpointed layers' boundary inputs live in host memory between
forward and backward, copied on a side CUDA stream so the copies overlap with compute.

With activation checkpointing, what a decoder layer keeps for backward is its input: the hidden states
at the layer boundary (tokens x hidden per layer; 1.5 GB at 512k tokens x 1536 in bf16, times the
layers). A non-reentrant checkpoint holds that input itself (in its recompute closure, or as a saved
input, depending on the torch version), so a `saved_tensors_hooks` offloader around the model cannot
be relied on to see it. `offloaded_checkpoint` therefore takes the boundary tensor out of the
checkpoint's hands: it packs it into an `ActivationOffloader` entry (a device-to-host copy), runs
torch's checkpoint on a closure that reads the live tensor in forward and the entry's restored copy
in the recompute, and passes only an empty anchor tensor (for the device) as the checkpoint's input.

Overlap (CUDA): the forward copy runs on the offloader's stream after the compute stream has produced
the tensor; `record_stream` keeps its memory from being reused before the copy ends. In backward,
unpacking one layer's input starts bringing back the layer packed before it (the next one backward
needs), so that copy overlaps with this layer's recompute and backward; the compute stream waits on
the copy's event before it reads the tensor. On CPU the same pack / unpack code makes a plain host
copy (what the CPU tests exercise).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class _Entry:
    """One packed tensor: its host copy, and (once brought back) its device copy with a ready event."""

    def __init__(self, host: torch.Tensor, device: torch.device, requires_grad: bool, previous):
        self.host, self.device, self.requires_grad = host, device, requires_grad
        self.previous = previous  # weakref to the entry packed before this one (prefetched at unpack)
        self.restored: torch.Tensor | None = None
        self.ready: torch.cuda.Event | None = None


class ActivationOffloader:
    """pack(tensor) -> entry (device-to-host copy); unpack(entry) -> the tensor back on its device.

    Counters (packed_tensors, packed_bytes, unpacked_tensors) say what went through it (tests, logs)."""

    def __init__(self):
        self.stream: torch.cuda.Stream | None = None
        self._last: weakref.ref | None = None
        self.packed_tensors = self.packed_bytes = self.unpacked_tensors = 0

    def pack(self, tensor: torch.Tensor) -> _Entry:
        cuda = tensor.is_cuda
        host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=cuda)
        with self._side_stream(tensor.device) as stream:
            host.copy_(tensor.detach(), non_blocking=cuda)
        if stream is not None:
            tensor.record_stream(stream)  # its memory is not reused before the copy ends
        entry = _Entry(host, tensor.device, tensor.requires_grad, self._last)
        self._last = weakref.ref(entry)
        self.packed_tensors += 1
        self.packed_bytes += tensor.numel() * tensor.element_size()
        return entry

    def unpack(self, entry: _Entry) -> torch.Tensor:
        """The entry's tensor on its device (prefetched or copied now); starts the previous entry's copy."""
        if entry.restored is None:
            self._bring_back(entry)
        previous = entry.previous() if entry.previous is not None else None
        if previous is not None and previous.restored is None:
            self._bring_back(previous)
        tensor, ready = entry.restored, entry.ready
        entry.restored = entry.ready = None  # the host copy stays: a retained graph can unpack again
        if ready is not None:
            torch.cuda.current_stream(tensor.device).wait_event(ready)
        self.unpacked_tensors += 1
        return tensor.requires_grad_(entry.requires_grad)

    def _bring_back(self, entry: _Entry) -> None:
        # Allocated on the compute stream, which uses and frees it; the copy waits for that stream's
        # queued work (the memory may have just been freed by it) and the compute stream for the copy.
        restored = torch.empty(entry.host.shape, dtype=entry.host.dtype, device=entry.device)
        with self._side_stream(entry.device) as stream:
            restored.copy_(entry.host, non_blocking=stream is not None)
            entry.ready = stream.record_event() if stream is not None else None
        entry.restored = restored

    @contextlib.contextmanager
    def _side_stream(self, device: torch.device):
        """The offloader's CUDA stream, ordered after the compute stream's queued work (CPU: none)."""
        if device.type != "cuda":
            yield None
            return
        if self.stream is None or self.stream.device != device:
            self.stream = torch.cuda.Stream(device)
        self.stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self.stream):
            yield self.stream


class _Boundary:
    """The layer input a checkpoint's closure reads: the live tensor once (forward), then the
    offloader's restored copy (each recompute)."""

    def __init__(self, offloader: ActivationOffloader, tensor: torch.Tensor):
        self.offloader, self.live, self.entry = offloader, tensor, offloader.pack(tensor)

    def take(self) -> torch.Tensor:
        if self.live is not None:
            live, self.live = self.live, None
            return live
        return self.offloader.unpack(self.entry)


def offloaded_checkpoint(offloader: ActivationOffloader, preserve_rng_state: bool = False) -> Callable:
    """A `checkpoint_fn` for torch's checkpoint_wrapper: non-reentrant checkpoint of `module` whose
    boundary input (the first positional argument, else `hidden_states=`) goes through `offloader`."""
    options = dict(use_reentrant=False, preserve_rng_state=preserve_rng_state)

    def run(module: nn.Module, *args, **kwargs):
        rest, rest_kwargs, tensor = _split_boundary(args, kwargs)
        if tensor is None:
            return checkpoint(module, *args, **options, **kwargs)
        if not torch.is_grad_enabled():  # nothing is kept for a backward: no copy
            return module(tensor, *rest, **rest_kwargs)
        boundary = _Boundary(offloader, tensor)

        def forward(_anchor, *inner, **inner_kwargs):
            return module(boundary.take(), *inner, **inner_kwargs)

        # The anchor (no storage) tells checkpoint the device; the boundary tensor is not its input.
        return checkpoint(forward, tensor.new_empty(0), *rest, **options, **rest_kwargs)

    return run


def _split_boundary(args: tuple, kwargs: dict) -> tuple[tuple, dict, torch.Tensor | None]:
    """(the other args, the other kwargs, the boundary tensor or None); the boundary goes first again."""
    if args and isinstance(args[0], torch.Tensor):
        return args[1:], kwargs, args[0]
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return args, {k: v for k, v in kwargs.items() if k != "hidden_states"}, kwargs["hidden_states"]
    return args, kwargs, None
