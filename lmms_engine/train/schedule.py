"""Learning-rate schedules as pure functions of the step (nothing to checkpoint)."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "linear", "wsd")


def lr_at(step: int, *, lr: float, schedule: str, warmup_steps: int, max_steps: int, min_lr_ratio: float, decay_ratio: float) -> float:
    """LR for optimizer step `step` (1-based).

    Linear warmup over `warmup_steps`, then:
      constant: lr.
      cosine:   cosine decay from lr to lr * min_lr_ratio at max_steps.
      linear:   linear decay from lr to lr * min_lr_ratio at max_steps.
      wsd:      warmup-stable-decay; constant until the last `decay_ratio` of the steps, then linear
                decay to lr * min_lr_ratio.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule={schedule!r}; choose one of {SCHEDULES}")
    if warmup_steps > 0 and step <= warmup_steps:
        return lr * step / warmup_steps
    floor = lr * min_lr_ratio
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        progress = _fraction(step - warmup_steps, max_steps - warmup_steps)
        return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return lr - (lr - floor) * _fraction(step - warmup_steps, max_steps - warmup_steps)
    decay_steps = max(1, round(decay_ratio * max_steps))
    decay_start = max_steps - decay_steps
    if step <= decay_start:
        return lr
    return lr - (lr - floor) * _fraction(step - decay_start, decay_steps)


def _fraction(done: int, total: int) -> float:
    return min(1.0, max(0.0, done / total)) if total > 0 else 1.0
