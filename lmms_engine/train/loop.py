"""The training loop: read it top to bottom. Everything it calls was built by the entry point."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lmms_engine.checkpoint.manager import save_checkpoint
from lmms_engine.data.batch import Batch
from lmms_engine.data.steps import StepSource
from lmms_engine.models.base import TEXT_INPUT_KEYS
from lmms_engine.parallel.base import Strategy
from lmms_engine.train.state import capture_rng

log = logging.getLogger("lmms_engine.train")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Steps whose times are logged once: the first compiles (parallel.compile) and warms CUDA up, the
# second recompiles for dynamic pack shapes, the third is steady.
WARMUP_STEPS_LOGGED = 3


@dataclass
class StepContext:
    """What one optimizer step needs (train_step): the benchmarks build only this."""

    module: nn.Module  # the strategy-prepared CausalLMWithLoss
    optimizer: torch.optim.Optimizer
    strategy: Strategy
    collate: Callable[[Any], Batch]  # a micro-batch of the step source -> its Batch (prefetched or not)
    attention_kwargs: Callable[[Batch], dict]  # kernels.KernelPatcher.attention_kwargs
    flops_fn: Callable[[Batch], float]  # training FLOPs of a micro-batch (ModelBundle.step_flops)
    max_grad_norm: float = float("inf")  # inf: no clipping
    unpad: bool = False  # kernels.use_rmpad on unpacked data
    input_keys: tuple[str, ...] = TEXT_INPUT_KEYS  # the batch fields the model's forward takes
    pack_multiple: int = 1  # packs padded to a multiple of this many tokens (parallel.sp_degree: equal shards)


class Sinks(Protocol):
    def log(self, metrics: dict) -> None: ...

    def close(self) -> None: ...


@dataclass
class LoopPolicy:
    """What the loop does around the steps: data order, learning rate, logging, checkpoints, stops."""

    step_source: StepSource
    lr_at: Callable[[int], float]  # step -> learning rate
    sinks: Sinks
    checkpoint_root: Path
    max_steps: int
    save_every: int = 0  # 0: no periodic checkpoint
    save_final: bool = True  # checkpoint after the last step
    max_bad_steps: int = 5  # this many consecutive non-finite steps stop the run (0: never)
    keep_last: int | None = None  # complete checkpoints kept (None: all)
    bad_steps: int = 0  # non-finite (skipped) steps so far, carried through checkpoints
    peak_flops: float | None = None  # per device, for MFU
    evaluate: Callable[[StepContext], dict] | None = None  # -> {eval_loss, eval_tokens} (train/evaluate.py); None: no eval data
    eval_every: int = 0  # evaluate every N steps (0: only after the last step)


def train(ctx: StepContext, policy: LoopPolicy, start_step: int) -> bool:
    """Steps start_step+1 .. max_steps. Returns False when a SIGTERM / SIGINT stopped it early
    (after a checkpoint of the step it was in), True when it ran to the end."""
    run_start = time.perf_counter()
    ctx.module.train()
    bad_in_row, saved_at, warmup_times = 0, None, []
    with _stop_signals() as stop:
        for step in range(start_step + 1, policy.max_steps + 1):
            step_start = time.perf_counter()
            reset_peak_memory(ctx.strategy.device)
            lr = set_learning_rate(ctx.optimizer, policy.lr_at(step))
            stats = train_step(ctx, policy.step_source.next_step())
            seconds = time.perf_counter() - step_start
            note_warmup(warmup_times, seconds, last=step == policy.max_steps)
            bad_in_row = _count_bad_step(ctx, policy, step, stats, bad_in_row)
            metrics = _step_metrics(ctx, policy, step, lr, stats, seconds, time.perf_counter() - run_start)
            if _eval_due(policy, step):  # after the step's timing: eval time is not training throughput
                metrics.update(policy.evaluate(ctx))
            policy.sinks.log({**metrics, "skipped": stats["skipped"], "bad_steps": policy.bad_steps})
            _check_bad_steps(policy, step, bad_in_row)  # after logging: the last bad step is in metrics.jsonl
            if policy.save_every and step % policy.save_every == 0 and step != policy.max_steps:
                save(ctx, policy, step)
                saved_at = step
            if step != policy.max_steps and ctx.strategy.any_rank(stop.received is not None):
                if saved_at != step:
                    save(ctx, policy, step)
                log.info("received %s: checkpoint at step %d, resume with trainer.resume=auto",
                         stop.received or "a stop signal on another rank", step)
                return False
    if start_step < policy.max_steps and policy.save_final:
        save(ctx, policy, policy.max_steps)
    return True


def note_warmup(times: list[float], seconds: float, last: bool) -> str | None:
    """Collect the first steps' times; once WARMUP_STEPS_LOGGED are in (or the run ends), log and
    return one line with the compile / warm-up time: the excess of the first steps over the fastest of
    them (never negative: a later step can be the slower one, with a longer pack or a busy machine)."""
    if len(times) >= WARMUP_STEPS_LOGGED:
        return None
    times.append(seconds)
    if len(times) < WARMUP_STEPS_LOGGED and not last:
        return None
    steady = min(times)
    excess = sum(t - steady for t in times)
    line = (f"compile + warm-up: {excess:.1f} s (first steps {', '.join(f'{t:.2f}' for t in times)} s; "
            f"steady step {steady:.2f} s)")
    log.info(line)
    return line


def _eval_due(policy: LoopPolicy, step: int) -> bool:
    if policy.evaluate is None:
        return False
    return step == policy.max_steps or (policy.eval_every > 0 and step % policy.eval_every == 0)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Each param group at lr times its `lr_scale` (per-component learning rates)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr


def _count_bad_step(ctx: StepContext, policy: LoopPolicy, step: int, stats: dict, bad_in_row: int) -> int:
    """Consecutive skipped steps so far (a skipped step is counted and warned about)."""
    if not stats["skipped"]:
        return 0
    policy.bad_steps += 1
    log.warning("step %d: non-finite loss %s / grad norm %s, update skipped (rank %d sample_ids %s)",
                step, stats["loss"], stats["grad_norm"], ctx.strategy.rank, stats["sample_ids"])
    return bad_in_row + 1


def _check_bad_steps(policy: LoopPolicy, step: int, bad_in_row: int) -> None:
    if policy.max_bad_steps and bad_in_row >= policy.max_bad_steps:
        raise ValueError(f"{bad_in_row} consecutive non-finite steps (loss or grad norm), the last at step "
                         f"{step}; stopping (trainer.max_bad_steps={policy.max_bad_steps}): lower optim.lr or "
                         f"check the data of the sample_ids in the warnings above")


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


def train_step(ctx: StepContext, micro_batches: list) -> dict:
    """Forward/backward over this rank's micro-batches, then one optimizer step.

    The loss is the mean over every trained label token of the global step: each micro-batch's
    token-summed loss is divided by the token count of all micro-batches on all ranks (and scaled
    by the world size, since data parallelism averages gradients across ranks). Under sequence
    parallelism each rank's loss covers its shard's labels only, while counts that describe whole
    micro-batches are summed over the data-parallel replicas (Strategy.all_reduce_data).
    """
    strategy = ctx.strategy
    batches = [_prepare(ctx, ctx.collate(micro_batch)) for micro_batch in micro_batches]
    counts = torch.tensor([sum(b.num_label_tokens for b in batches), sum(sum(b.doc_lengths) for b in batches)],
                          dtype=torch.float64)
    label_tokens, real_tokens = strategy.all_reduce_data(counts.to(strategy.device)).tolist()
    scale = strategy.world_size / max(label_tokens, 1.0)
    loss_sum = torch.zeros((), device=strategy.device, dtype=torch.float64)
    flops = 0.0
    for i, batch in enumerate(batches):
        with strategy.gradient_sync(ctx.module, enabled=i == len(batches) - 1):
            with strategy.autocast():
                batch_loss = ctx.module(labels=batch.labels, **_model_inputs(ctx, batch))
            strategy.backward(batch_loss * scale, ctx.module)
        loss_sum += batch_loss.detach().double()
        flops += ctx.flops_fn(batch)
    loss = strategy.all_reduce_sum(loss_sum).item() / max(label_tokens, 1.0)  # every rank sees the same value
    flops = strategy.all_reduce_data(torch.tensor(flops, dtype=torch.float64, device=strategy.device)).item()
    grad_norm, skipped = strategy.step(ctx.module, ctx.optimizer, max_norm=ctx.max_grad_norm, loss=loss)
    return {
        "loss": loss,
        "grad_norm": grad_norm,
        "skipped": skipped,
        "sample_ids": [b.sample_ids for b in batches],
        "tokens": int(real_tokens),
        "label_tokens": int(label_tokens),
        "flops": flops,
    }


def _prepare(ctx: StepContext, batch: Batch) -> Batch:
    """Unpad if asked (the document lengths were counted at collate time, on the CPU, so token
    counts and FLOPs need no device sync), pad packs to ctx.pack_multiple, move tensors to the device."""
    if ctx.unpad:
        batch = batch.unpadded()
    return batch.padded_to_multiple(ctx.pack_multiple).to(ctx.strategy.device)


def _model_inputs(ctx: StepContext, batch: Batch) -> dict:
    return {**batch.model_inputs(ctx.input_keys), **ctx.attention_kwargs(batch)}


def _step_metrics(ctx: StepContext, policy: LoopPolicy, step: int, lr: float, stats: dict, seconds: float,
                  elapsed: float) -> dict:
    world = ctx.strategy.world_size
    mfu = stats["flops"] / (seconds * policy.peak_flops * world) if policy.peak_flops else None
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


def save(ctx: StepContext, policy: LoopPolicy, step: int) -> None:
    state = {"step": step, "data": policy.step_source.state_dict(), "rng": capture_rng(), "bad_steps": policy.bad_steps}
    save_checkpoint(policy.checkpoint_root, step, ctx.module, ctx.optimizer, state, ctx.strategy,
                    keep_last=policy.keep_last)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory of the step; on CPU, the process's peak resident memory so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
