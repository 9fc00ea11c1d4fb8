"""The `kernels/` group's target: attention backend for packed batches, Liger ops, loss kernel."""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel

from lmms_engine.kernels import attention
from lmms_engine.kernels.encoder_attention import encoder_varlen_backend, patch_vision_attention
from lmms_engine.kernels.encoder_mlp import pad_encoder_mlps
from lmms_engine.kernels.loss import cross_entropy_sum, liger_fused_cross_entropy_sum

log = logging.getLogger(__name__)


class KernelPatcher:
    """Chooses and applies the kernels of a run.

    use_rmpad: unpadded micro-batches (no packing) are flattened into one padding-free stream;
      packed batches are padding-free already.
    attn_backend: auto | flash_attn | torch_varlen | flex | sdpa, used for every padding-free batch.
    use_liger_kernel: Liger RMSNorm / RoPE / SwiGLU on the model and fused linear cross-entropy.
    pad_encoder_mlps: on CUDA, run encoder MLPs of odd width (Qwen2.5-VL vision: 3420) on zero-padded
      weights of a multiple of 128 (exact; kernels/encoder_mlp.py).
    """

    def __init__(self, use_rmpad: bool = False, attn_backend: str = "sdpa", use_liger_kernel: bool = False,
                 pad_encoder_mlps: bool = True):
        if attn_backend != "auto" and attn_backend not in attention.BACKENDS:
            raise ValueError(f"kernels.attn_backend={attn_backend!r}; choose auto or one of {attention.BACKENDS}")
        self.use_rmpad = use_rmpad
        self.attn_backend = attn_backend
        self.use_liger_kernel = use_liger_kernel
        self.pad_encoder_mlps = pad_encoder_mlps
        self.backend: str | None = None  # resolved by apply()

    def apply(self, model: torch.nn.Module, device: torch.device, padding_free: bool) -> None:
        """Patch `model` in place. padding_free: the run's batches are packed or unpadded streams."""
        if padding_free:
            self.backend = attention.resolve_backend(self.attn_backend, device)
            text_impl = attention.register(self.backend)
            log.info("attention: %s over padding-free batches", self.backend)
        else:
            text_impl = "sdpa"
            log.info("attention: sdpa over padded batches")
        _set_attention(model, text_impl, device)
        if self.use_liger_kernel:
            from lmms_engine.kernels.liger import apply_liger

            _require_cuda_for_liger(device)
            patched = apply_liger(model)
            log.info("liger: patched %s", ", ".join(patched))
        if self.pad_encoder_mlps and device.type == "cuda":  # after Liger, which rebinds the MLPs' forward too
            for encoder in _encoders(model).values():
                pad_encoder_mlps(encoder, fused_act=self.use_liger_kernel)

    def loss_fn(self):
        return liger_fused_cross_entropy_sum() if self.use_liger_kernel else cross_entropy_sum

    def attention_kwargs(self, batch: dict) -> dict:
        """Per-batch kwargs for padding-free attention (empty for padded batches)."""
        if "cu_seqlens" not in batch:
            return {}
        return attention.varlen_kwargs(batch["cu_seqlens"], batch["max_seqlen"], self.backend)


def _set_attention(model: torch.nn.Module, text_impl: str, device: torch.device) -> None:
    """The decoder gets `text_impl` (causal). Encoders beside it (a VL model's vision tower) keep
    transformers' bidirectional sdpa, and on CUDA get one varlen kernel call over all their
    images instead (kernels/encoder_attention.py): packed causal kernels must never reach them."""
    encoders = _encoders(model)
    if not encoders:
        model.set_attn_implementation(text_impl)
        return
    model.model.language_model.set_attn_implementation(text_impl)
    backend = encoder_varlen_backend(device)
    for name, encoder in encoders.items():
        encoder.set_attn_implementation("sdpa")
        patched = patch_vision_attention(encoder, backend) if backend else 0
        if patched:
            log.info("attention: %s varlen (bidirectional) for %s", backend, name)
        else:  # e.g. the audio encoder, whose rmpad path picks its own varlen kernel (models/audio_encoder.py)
            log.info("attention: %s keeps its own (sdpa config; a family's rmpad path may run varlen)", name)


def _encoders(model: torch.nn.Module) -> dict[str, PreTrainedModel]:
    """Sub-models next to `model.model.language_model` (none for a text-only LM)."""
    inner = getattr(model, "model", None)
    if inner is None or not isinstance(getattr(inner, "language_model", None), PreTrainedModel):
        return {}
    return {name: child for name, child in inner.named_children()
            if isinstance(child, PreTrainedModel) and name != "language_model"}


def _require_cuda_for_liger(device: torch.device) -> None:
    if device.type != "cuda":
        raise ValueError(
            "kernels.use_liger_kernel=true needs a CUDA device: Liger's Triton kernels do not run on "
            f"{device.type}; use kernels=none or kernels=rmpad on CPU"
        )
