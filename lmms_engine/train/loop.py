"""The training loop: read it top to bottom. Everything it calls was built by the entry point."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lmms_engine.checkpoint.manager import save_checkpoint
from lmms_engine.models.base import ModelBundle
from lmms_engine.kernels.rmpad import document_lengths, unpad_batch
from lmms_engine.train.state import capture_rng

log = logging.getLogger("lmms_engine.train")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class TrainContext:
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    strategy: object  # parallel strategy (single / fsdp2 / ...)
    patcher: object  # kernels.KernelPatcher
    dataset: object  # data.SFTDataset
    step_batches: object  # train.data_iter.StepBatches
    lr_at: object  # step -> learning rate
    flops_fn: object  # micro-batch (with doc_lengths) -> training FLOPs
    peak_flops: float | None  # per device, for MFU
    sinks: object  # logging sinks
    checkpoint_root: Path
    max_steps: int
    max_grad_norm: float
    save_every: int
    unpad: bool  # kernels.use_rmpad on unpacked data
    input_keys: tuple[str, ...] = ModelBundle.input_keys  # batch keys the model's forward takes
    collator: object = None  # train.prefetch collator (None: dataset.collate in the step)
    save_final: bool = True  # checkpoint after the last step
    max_bad_steps: int = 5  # this many consecutive non-finite steps stop the run (0: never)
    keep_last: int | None = None  # complete checkpoints kept (None: all)
    bad_steps: int = 0  # non-finite (skipped) steps so far, carried through checkpoints


def train(ctx: TrainContext, start_step: int) -> bool:
    """Steps start_step+1 .. max_steps. Returns False when a SIGTERM / SIGINT stopped it early
    (after a checkpoint of the step it was in), True when it ran to the end."""
    run_start = time.perf_counter()
    ctx.module.train()
    bad_in_row, saved_at = 0, None
    with _stop_signals() as stop:
        for step in range(start_step + 1, ctx.max_steps + 1):
            step_start = time.perf_counter()
            reset_peak_memory(ctx.strategy.device)
            lr = ctx.lr_at(step)
            for group in ctx.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            stats = train_step(ctx, ctx.step_batches.next_step())
            seconds = time.perf_counter() - step_start
            bad_in_row = bad_in_row + 1 if stats["skipped"] else 0
            if stats["skipped"]:
                ctx.bad_steps += 1
                log.warning("step %d: non-finite loss %s / grad norm %s, update skipped (rank %d sample_ids %s)",
                            step, stats["loss"], stats["grad_norm"], ctx.strategy.rank, stats["sample_ids"])
            metrics = _step_metrics(ctx, step, lr, stats, seconds, time.perf_counter() - run_start)
            ctx.sinks.log({**metrics, "skipped": stats["skipped"], "bad_steps": ctx.bad_steps})
            if ctx.max_bad_steps and bad_in_row >= ctx.max_bad_steps:
                raise ValueError(f"{bad_in_row} consecutive non-finite steps (loss or grad norm), the last at step "
                                 f"{step}; stopping (trainer.max_bad_steps={ctx.max_bad_steps}): lower optim.lr or "
                                 f"check the data of the sample_ids in the warnings above")
            if ctx.save_every and step % ctx.save_every == 0 and step != ctx.max_steps:
                save(ctx, step)
                saved_at = step
            if step != ctx.max_steps and ctx.strategy.any_rank(stop.received is not None):
                if saved_at != step:
                    save(ctx, step)
                log.info("received %s: checkpoint at step %d, resume with trainer.resume=auto",
                         stop.received or "a stop signal on another rank", step)
                return False
    if start_step < ctx.max_steps and ctx.save_final:
        save(ctx, ctx.max_steps)
    return True


class _StopFlag:
    received: str | None = None


@contextlib.contextmanager
def _stop_signals():
    """SIGTERM / SIGINT set a flag the loop reads at the end of each step; a second SIGINT
    interrupts at once. The previous handlers come back afterwards. (Main thread only: signal
    handlers cannot be installed elsewhere; there the flag simply never sets.)"""
    stop = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if stop.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.received = name
        log.warning("received %s: stopping after this step (with a checkpoint)", name)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def train_step(ctx: TrainContext, micro_batch_indices: list[list[int]]) -> dict:
    """Forward/backward over this rank's micro-batches, then one optimizer step.

    The loss is the mean over every trained label token of the global step: each micro-batch's
    token-summed loss is divided by the token count of all micro-batches on all ranks (and scaled
    by the world size, since data parallelism averages gradients across ranks).
    """
    strategy = ctx.strategy
    collate = ctx.collator.get if ctx.collator is not None else ctx.dataset.collate
    batches = [_prepare(ctx, collate(indices)) for indices in micro_batch_indices]
    counts = torch.tensor([sum(b["num_label_tokens"] for b in batches), sum(sum(b["doc_lengths"]) for b in batches)], dtype=torch.float64)
    label_tokens, real_tokens = strategy.all_reduce_sum(counts.to(strategy.device)).tolist()
    scale = strategy.world_size / max(label_tokens, 1.0)
    loss_sum = torch.zeros((), device=strategy.device, dtype=torch.float64)
    flops = 0.0
    for i, batch in enumerate(batches):
        with strategy.gradient_sync(ctx.module, enabled=i == len(batches) - 1):
            with strategy.autocast():
                batch_loss = ctx.module(labels=batch["labels"], **_model_inputs(ctx, batch))
            strategy.backward(batch_loss * scale, ctx.module)
        loss_sum += batch_loss.detach().double()
        flops += ctx.flops_fn(batch)
    totals = strategy.all_reduce_sum(torch.stack([loss_sum, torch.tensor(flops, dtype=torch.float64, device=strategy.device)]))
    loss = totals[0].item() / max(label_tokens, 1.0)  # all-reduced: every rank sees the same value
    grad_norm, skipped = strategy.step(ctx.module, ctx.optimizer, max_norm=ctx.max_grad_norm, loss=loss)
    return {
        "loss": loss,
        "grad_norm": grad_norm,
        "skipped": skipped,
        "sample_ids": [b.get("sample_ids") for b in batches],
        "tokens": int(real_tokens),
        "label_tokens": int(label_tokens),
        "flops": totals[1].item(),
    }


def _prepare(ctx: TrainContext, batch: dict) -> dict:
    """Unpad if asked, note the document lengths (for token counts and FLOPs, read on the CPU
    so no device sync is needed), and move tensors to the device."""
    if ctx.unpad and "attention_mask" in batch:
        batch = unpad_batch(batch)
    batch["doc_lengths"] = document_lengths(batch)
    device = ctx.strategy.device
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _model_inputs(ctx: TrainContext, batch: dict) -> dict:
    inputs = {k: batch[k] for k in ctx.input_keys if k in batch}
    inputs.update(ctx.patcher.attention_kwargs(batch))
    return inputs


def _step_metrics(ctx: TrainContext, step: int, lr: float, stats: dict, seconds: float, elapsed: float) -> dict:
    world = ctx.strategy.world_size
    mfu = stats["flops"] / (seconds * ctx.peak_flops * world) if ctx.peak_flops else None
    return {
        "step": step,
        "loss": stats["loss"],
        "lr": lr,
        "grad_norm": stats["grad_norm"],
        "tokens": stats["tokens"],
        "label_tokens": stats["label_tokens"],
        "tokens_per_s": stats["tokens"] / seconds,
        "mfu": mfu,
        "peak_mem_gb": peak_memory_gb(ctx.strategy.device),
        "step_s": seconds,
        "elapsed_s": elapsed,
    }


def save(ctx: TrainContext, step: int) -> None:
    state = {"step": step, "data": ctx.step_batches.state_dict(), "rng": capture_rng(), "bad_steps": ctx.bad_steps}
    save_checkpoint(ctx.checkpoint_root, step, ctx.module, ctx.optimizer, state, ctx.strategy, keep_last=ctx.keep_last)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory of the step; on CPU, the process's peak resident memory so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
