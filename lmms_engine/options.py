"""Fixed option sets and setting parsers shared by the builders and the config checks.

Nothing here imports torch or transformers: the entry point checks the composed config against these
before the heavy imports (config_checks.py), and the builders use the same constants, so the two
checks cannot drift apart.
"""

from __future__ import annotations

OVERLONG_POLICIES = ("drop", "truncate")  # data.overlong (data/packing.py)
ON_ERROR_POLICIES = ("raise", "skip")  # data.on_error (data/prepare.py)
BACKENDS = ("fa4", "flash_attn", "torch_varlen", "flex", "sdpa")  # kernels.attn_backend, besides auto (kernels/attention.py)
PRECISIONS = ("auto", "bf16", "fp32")  # parallel.precision (parallel/base.py)
ZERO_STAGES = (1, 2, 3)  # parallel.stage of parallel=zero1|zero2|zero3 (parallel/deepspeed.py)


def checkpoint_every(setting: bool | int) -> int:
    """parallel.activation_checkpointing: false/0 = off, true/1 = every unit, N = every N-th unit."""
    if isinstance(setting, bool):
        return int(setting)
    if not isinstance(setting, int) or setting < 0:
        raise ValueError(f"parallel.activation_checkpointing={setting!r}; use false, true or a positive integer N (every N-th layer)")
    return setting


def encoder_checkpointing(setting: bool | None, every: int) -> bool:
    """parallel.encoder_checkpointing: null = like the decoder (on if activation_checkpointing is),
    true / false = checkpoint every encoder block (vision / audio) or none, whatever the decoder does."""
    if setting is None:
        return every > 0
    if not isinstance(setting, bool):
        raise ValueError(f"parallel.encoder_checkpointing={setting!r}; use null (like the decoder), true or false")
    return setting


def check_offload(offload: bool, every: int) -> None:
    """parallel.offload_activations: a boolean; true needs activation checkpointing (it offloads what that keeps)."""
    if not isinstance(offload, bool):
        raise ValueError(f"parallel.offload_activations={offload!r} must be true or false")
    if offload and not every:
        raise ValueError("parallel.offload_activations=true offloads what activation checkpointing keeps, "
                         "but parallel.activation_checkpointing is off: set parallel.activation_checkpointing=true")
