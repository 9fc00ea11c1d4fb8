"""Parameter names as the HF model has them, whatever wraps it.

Wrappers insert parts into parameter names: the training module (`lm.`, train/module.py), DDP and
DeepSpeedModule (`module.`), activation checkpointing (`_checkpoint_wrapped_module.`) and
torch.compile (`_orig_mod.`). Freezing, per-component learning rates, DeepSpeed's gathered state
dict and the HF export all match names against the bare model's; this is the one place that
strips them.
"""

from __future__ import annotations

from lmms_engine import compat

# Inserted anywhere in a name (every wrapped unit adds one).
WRAPPER_PARTS = (compat.CHECKPOINT_WRAPPER_PREFIX, compat.COMPILE_WRAPPER_PREFIX)
# Leading only, in this order: the strategy's wrapper, then the training module's `lm`.
WRAPPER_PREFIXES = ("module.", "lm.")


def unwrapped_name(name: str, prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> str:
    """`name` without the wrappers' parts, and without the leading `prefixes` (default: all of them;
    () keeps the training module's own names, e.g. `lm.model.embed_tokens.weight`)."""
    for part in WRAPPER_PARTS:
        name = name.replace(part, "")
    for prefix in prefixes:
        name = name.removeprefix(prefix)
    return name
