"""Final export to Hugging Face format (safetensors + config + tokenizer) under `<run_dir>/hf/`."""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from safetensors.torch import save_file
from torch import nn
from transformers.utils import logging as hf_logging

from lmms_engine import compat
from lmms_engine.checkpoint.manager import describe_os_error
from lmms_engine.names import unwrapped_name

log = logging.getLogger(__name__)


def export_hf(module: nn.Module, artifacts, out_dir: Path, strategy, transform=None) -> None:
    """Gather full weights (on rank 0, in CPU memory) and save them, atomically, with `artifacts`:
    the tokenizer, or a multimodal model's processor (tokenizer + image / video preprocessing).
    transform: the HF model's state dict -> what to save (LoRA: the merged weights)."""
    state = strategy.full_state_dict(module)
    error = None
    if strategy.is_main:
        lm = strategy.unwrap(module).lm
        lm_state = _without_tied_copies(lm, {unwrapped_name(name): tensor for name, tensor in state.items()})
        try:
            _write(lm, transform(lm_state) if transform else lm_state, artifacts, out_dir)
        except OSError as err:  # disk full, permissions: the run's checkpoint is complete, say so
            error = err
    if strategy.any_rank(error is not None):  # also the barrier: no rank waits for one that failed
        shutil.rmtree(out_dir.with_name(out_dir.name + ".tmp"), ignore_errors=True)
        reason = describe_os_error(error) if error is not None else "it failed on rank 0"
        raise ValueError(f"could not export the model to {out_dir}: {reason}; the final checkpoint is complete: free "
                         f"space or fix permissions, then run again with trainer.resume=auto to export it")


def export_adapter(module: nn.Module, adapter_config, to_adapter_state, out_dir: Path, strategy) -> None:
    """The LoRA adapter alone, as PeftModel.save_pretrained writes it (adapter_model.safetensors +
    adapter_config.json: loads with PeftModel.from_pretrained(base_model, out_dir))."""
    state = strategy.full_state_dict(module)
    if strategy.is_main:
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(to_adapter_state({unwrapped_name(n): t for n, t in state.items()}), tmp / "adapter_model.safetensors")
        adapter_config.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        log.info("exported the LoRA adapter to %s", out_dir)
    strategy.barrier()


def _without_tied_copies(lm: nn.Module, state: dict) -> dict:
    """Drop the second name of a tied parameter (lm_head.weight tied to the embeddings): a gathered
    full state dict (FSDP2) holds it as a separate copy, which save_pretrained would then write twice."""
    first_name: dict[int, str] = {}
    copies = set()
    for name, param in lm.named_parameters(remove_duplicate=False):
        if id(param) in first_name and first_name[id(param)] in state:
            copies.add(name)
        first_name.setdefault(id(param), name)
    return {name: tensor for name, tensor in state.items() if name not in copies}


def _write(lm, lm_state: dict, artifacts, out_dir: Path) -> None:
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with _standard_attention(lm.config), _no_progress_bar():
        lm.save_pretrained(tmp, state_dict=lm_state, safe_serialization=True)
    artifacts.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log.info("exported Hugging Face model to %s", out_dir)


@contextmanager
def _no_progress_bar():
    """transformers' "Writing model shards" bar, once per export, says nothing the log line after it does not."""
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


@contextmanager
def _standard_attention(config):
    """Our packed-attention names exist only inside a training process: the saved config (and each
    sub-config: text decoder, vision tower) names transformers' sdpa while saving."""
    configs = [config, *(getattr(config, name) for name in getattr(config, "sub_configs", {}))]
    saved = [compat.config_attn_implementation(c) for c in configs]
    try:
        for c in configs:
            compat.set_config_attn_implementation(c, "sdpa")
        yield
    finally:
        for c, impl in zip(configs, saved):
            compat.set_config_attn_implementation(c, impl)
