"""Final export to Hugging Face format (safetensors + config + tokenizer) under `<run_dir>/hf/`."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from torch import nn

log = logging.getLogger(__name__)


def export_hf(module: nn.Module, tokenizer, out_dir: Path, strategy) -> None:
    """Gather full weights (on rank 0, in CPU memory) and save them with the tokenizer, atomically."""
    state = strategy.full_state_dict(module)
    if strategy.is_main:
        lm_state = {name.removeprefix("lm."): tensor for name, tensor in state.items()}
        _write(strategy.unwrap(module).lm, lm_state, tokenizer, out_dir)
    strategy.barrier()


def _write(lm, lm_state: dict, tokenizer, out_dir: Path) -> None:
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    attn = lm.config._attn_implementation
    # Our packed-attention names exist only inside a training process; export the standard one.
    lm.config._attn_implementation = "sdpa"
    try:
        lm.save_pretrained(tmp, state_dict=lm_state, safe_serialization=True)
    finally:
        lm.config._attn_implementation = attn
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log.info("exported Hugging Face model to %s", out_dir)
