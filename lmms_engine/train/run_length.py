"""How long a run is: `trainer.max_steps`, or `trainer.epochs` turned into steps once the data is built.

An epoch is the dataset's micro-batches of one pass (packs with packing), walked `grad_accum x
world_size` at a time (train/data_iter.py); a tail too short for a whole step is dropped, so an epoch
is `micro_batches // (grad_accum * world_size)` steps, the same for every epoch. `optim.warmup_ratio`
becomes warmup steps of that total. Both are derived before the LR schedule and the loggers are made.
"""

from __future__ import annotations

import dataclasses
import logging
import math

from lmms_engine.config import RunConfig

log = logging.getLogger("lmms_engine.train")


def check_run_length(rc: RunConfig) -> None:
    """Refuse, before anything is built, what cannot be counted: epochs of a stream."""
    if rc.trainer.epochs is not None and rc.groups["data"].get("streaming", False):
        raise ValueError("trainer.epochs needs the data set's size, which data.streaming=true does not know; "
                         "use trainer.max_steps (and trainer.epochs=null)")


def steps_per_epoch(dataset, grad_accum: int, world_size: int) -> int:
    """Optimizer steps in one pass over `dataset` (an indexed SFTDataset)."""
    micro_batches = len(dataset.micro_batches(0))  # the same count every epoch: only the order changes
    per_step = grad_accum * world_size
    if micro_batches < per_step:
        raise ValueError(f"the dataset yields {micro_batches} micro-batches per epoch, fewer than one step needs "
                         f"(grad_accum {grad_accum} x {world_size} ranks = {per_step}); add data or lower trainer.grad_accum")
    return micro_batches // per_step


def resolve_run_length(rc: RunConfig, dataset, world_size: int) -> RunConfig:
    """`rc` with trainer.max_steps and optim.warmup_steps as step counts (a new RunConfig; `rc` is
    left as validated)."""
    max_steps = rc.trainer.max_steps
    if max_steps is None:
        per_epoch = steps_per_epoch(dataset, rc.trainer.grad_accum, world_size)
        max_steps = rc.trainer.epochs * per_epoch
        log.info("trainer.epochs=%d: %d micro-batches per epoch / (grad_accum %d x %d ranks) = %d steps per epoch "
                 "-> %d optimizer steps", rc.trainer.epochs, len(dataset.micro_batches(0)), rc.trainer.grad_accum,
                 world_size, per_epoch, max_steps)
    warmup_steps = rc.optim.warmup_steps
    if warmup_steps is None:
        warmup_steps = math.ceil(rc.optim.warmup_ratio * max_steps)  # rounded up, as transformers does
        log.info("optim.warmup_ratio=%g of %d steps -> %d warmup steps", rc.optim.warmup_ratio, max_steps, warmup_steps)
    return dataclasses.replace(rc, trainer=dataclasses.replace(rc.trainer, max_steps=max_steps),
                               optim=dataclasses.replace(rc.optim, warmup_steps=warmup_steps))
