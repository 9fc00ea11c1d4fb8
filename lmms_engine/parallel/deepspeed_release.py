"""Releasing what DeepSpeed holds, so that a finished run frees its process groups (issue 21).

After `engine.destroy()` a ZeRO-3 engine was still reachable from a module global:

    parameter_offload.FWD_MODULE_STACK  (ZeRO-3 pushes the model on it once and never pops it)
      -> the model -> its parameters' `ds_process_group`             -> the gloo / NCCL groups
                   -> the engine's forward pre / post hooks (closures) -> the engine, its ZeRO-3 optimizer

so the groups, and their worker threads, lived on to interpreter exit, where a worker can be ended
inside a noexcept destructor (SIGABRT). Everything else DeepSpeed keeps (the optimizer's backward
hook state pointing back at the engine, the hooks ZeRO-3 puts on each submodule) is a reference
cycle, which the collection in `parallel/dist.destroy` frees once nothing global reaches it.
"""

from __future__ import annotations

import logging
import sys

from lmms_engine import compat

log = logging.getLogger(__name__)


def release_engine(engine) -> None:
    """Leave nothing reachable from outside the engine, in order: DeepSpeed's own destroy (the
    ZeRO-3 optimizer's parameter and gradient hooks), the engine's forward hooks on the model, then
    the model's entries in ZeRO-3's module stack (these two even if destroy() raised)."""
    module = engine.module
    try:
        engine.destroy()
    finally:
        compat.deepspeed_remove_forward_hooks(engine)
        dropped = compat.deepspeed_forget_modules(module)
        log.debug("deepspeed: %d module(s) left ZeRO-3's forward stack", dropped)


def release_comm() -> None:
    """DeepSpeed's communication layer drops its own group references (deepspeed.utils.groups'
    too); a no-op when deepspeed.comm was never imported or initialised."""
    comm = sys.modules.get("deepspeed.comm")
    if comm is not None and comm.is_initialized():
        comm.destroy_process_group()
