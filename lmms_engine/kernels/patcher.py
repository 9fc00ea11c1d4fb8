"""The `kernels/` group's target: attention backend for packed batches, Liger ops, loss kernel."""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from typing import Protocol

import torch

from lmms_engine.kernels import attention, ulysses
from lmms_engine.kernels.encoder_mlp import PaddableMlp, pad_encoder_mlps
from lmms_engine.kernels.fp8 import ALIGN as FP8_ALIGN, check_fp8_supported, convert_decoder_linears
from lmms_engine.kernels.loss import cross_entropy_sum, liger_fused_cross_entropy_sum
from lmms_engine.parallel.sequence import SequenceParallel

log = logging.getLogger(__name__)


class EncoderKernels(Protocol):
    """What the patcher needs of a model family's modality encoder (models/encoders.py)."""

    name: str
    padded_mlps: Sequence[PaddableMlp]  # its MLP classes that run on padded weights (pad_encoder_mlps)

    def module(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def patch_kernels(self, model: torch.nn.Module, device: torch.device) -> list[str]: ...


class KernelPatcher:
    """Chooses and applies the kernels of a run.

    use_rmpad: unpadded micro-batches (no packing) are flattened into one padding-free stream;
      packed batches are padding-free already.
    attn_backend: auto | fa4 | flash_attn | torch_varlen | flex | sdpa, used for every padding-free batch
      (auto: the first of attention.AUTO_ORDER_CUDA that runs here; sdpa on CPU).
    use_liger_kernel: Liger RMSNorm / RoPE / SwiGLU on the model and fused linear cross-entropy.
    pad_encoder_mlps: on CUDA, run the encoder MLPs each encoder names (`padded_mlps`) of odd width (Qwen2.5-VL
      vision: 3420, Qwen3-VL-8B: 4304) on zero-padded weights of a multiple of 128 (exact; kernels/encoder_mlp.py).
    fp8: FP8 training of the decoder layers' linear projections with torchao (kernels/fp8.py; CUDA
      capability >= 8.9).
    """

    def __init__(self, use_rmpad: bool = False, attn_backend: str = "sdpa", use_liger_kernel: bool = False,
                 pad_encoder_mlps: bool = True, fp8: bool = False):
        if attn_backend != "auto" and attn_backend not in attention.BACKENDS:
            raise ValueError(f"kernels.attn_backend={attn_backend!r}; choose auto or one of {attention.BACKENDS}")
        self.use_rmpad = use_rmpad
        self.attn_backend = attn_backend
        self.use_liger_kernel = use_liger_kernel
        self.pad_encoder_mlps = pad_encoder_mlps
        self.fp8 = fp8
        self.backend: str | None = None  # resolved by apply()

    def check(self, device: torch.device) -> None:
        """ValueError, in one line, for a kernel asked for that `device` cannot run (a named attention
        backend, Liger, FP8): called before the model is built, so a mistake costs no build."""
        if self.attn_backend != "auto":
            attention.resolve_backend(self.attn_backend, device)
        if self.use_liger_kernel:
            _require_cuda_for_liger(device)
        if self.fp8:
            check_fp8_supported(device)

    def apply(self, model: torch.nn.Module, device: torch.device, padding_free: bool,
              encoders: Sequence[EncoderKernels] = (), decoder_path: str = "model", compiled: bool = False,
              sequence_parallel: SequenceParallel | None = None) -> None:
        """Patch `model` in place. padding_free: the run's batches are packed or unpadded streams.
        encoders / decoder_path: the model family's (ModelBundle.encoders / .decoder_path); each
        encoder's kernel hook is applied once here. compiled: the strategy will torch.compile the
        decoder layers and encoder blocks (Strategy.compile): Liger's per-op kernels stay out of them.
        sequence_parallel: the strategy's (None: off): the decoder's attention is the Ulysses wrapper of
        the backend (kernels/ulysses.py); the strategy shards the decoder's inputs, positions and the
        loss (Strategy.shard_sequence)."""
        if self.fp8:
            check_fp8_supported(device)  # before any patching
        if sequence_parallel is not None and not padding_free:
            raise ValueError("parallel.sp_degree > 1 needs padding-free batches: set data.packing=true or kernels=rmpad")
        if padding_free:
            self.backend = attention.resolve_backend(self.attn_backend, device, _head_dim(model))
            text_impl = attention.register(self.backend)
            log.info("attention: %s over padding-free batches", self.backend)
        else:
            text_impl = "sdpa"
            log.info("attention: sdpa over padded batches")
        if not encoders and _has_language_model(model):
            raise ValueError("KernelPatcher.apply: this model has encoders beside its decoder; pass the family's "
                             "encoders=bundle.encoders and decoder_path=bundle.decoder_path")
        # The decoder alone gets the (causal) packed backend: it must never reach an encoder.
        decoder = operator.attrgetter(decoder_path)(model) if encoders else model
        if sequence_parallel is not None:
            text_impl = ulysses.register(self.backend, sequence_parallel.degree)
            log.info("attention: %s wrapped in Ulysses all-to-alls over %d sequence shards", self.backend,
                     sequence_parallel.degree)
        decoder.set_attn_implementation(text_impl)
        for encoder in encoders:
            for line in encoder.patch_kernels(model, device):
                log.info("attention: %s", line)
        if self.use_liger_kernel:
            _require_cuda_for_liger(device)
            _apply_liger_ops(model, compiled)
        if self.pad_encoder_mlps and device.type == "cuda":  # after Liger, which rebinds the MLPs' forward too
            fused_act = self.use_liger_kernel and not compiled
            for encoder in encoders:
                pad_encoder_mlps(encoder.module(model), encoder.padded_mlps, fused_act=fused_act)
        if self.fp8:  # after Liger (which replaces the MLP modules' forward, not their Linear layers)
            convert_decoder_linears(decoder)

    def loss_fn(self):
        """(hidden, lm_head_weight, labels) -> summed token cross-entropy: Liger's fused linear CE, or
        the chunked one (kernels/loss.py)."""
        return liger_fused_cross_entropy_sum() if self.use_liger_kernel else cross_entropy_sum

    def token_multiple(self) -> int:
        """Each rank's share of a pack is padded to a multiple of this many tokens: 16 with fp8 (FP8
        matmuls of the weight gradient reduce over tokens), else 1. The pack itself is padded to
        Strategy.sequence_shards times this."""
        return FP8_ALIGN if self.fp8 else 1

    def attention_kwargs(self, batch: dict) -> dict:
        """Per-batch kwargs for padding-free attention (empty for padded batches)."""
        if "cu_seqlens" not in batch:
            return {}
        return attention.varlen_kwargs(batch["cu_seqlens"], batch["max_seqlen"], self.backend)


def _apply_liger_ops(model: torch.nn.Module, compiled: bool) -> None:
    """Liger's RMSNorm / SwiGLU / RoPE on the model, unless its layers will be compiled: Liger's ops
    are autograd.Functions around Triton launches, which dynamo traces poorly (the dynamo AssertionError
    at the RMSNorm seen on torch 2.11) and inductor cannot fuse with their neighbours anyway, while inductor
    generates fused RMSNorm, SiLU-mul and rotary kernels of its own. The fused linear cross-entropy
    (loss_fn, outside the compiled layers) is kept either way."""
    from lmms_engine.kernels.liger import apply_liger, restore_module_level

    if compiled:
        restored = restore_module_level()  # e.g. a rotary function an earlier model of this process swapped
        log.info("liger: fused linear cross-entropy only; RMSNorm / SwiGLU / RoPE left to torch.compile%s",
                 f" (restored {', '.join(restored)})" if restored else "")
        return
    log.info("liger: patched %s", ", ".join(apply_liger(model)))


def _head_dim(model: torch.nn.Module) -> int:
    text = model.config.get_text_config()
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def _has_language_model(model: torch.nn.Module) -> bool:
    return isinstance(getattr(getattr(model, "model", None), "language_model", None), torch.nn.Module)


def _require_cuda_for_liger(device: torch.device) -> None:
    if device.type != "cuda":
        raise ValueError(
            "kernels.use_liger_kernel=true needs a CUDA device: Liger's Triton kernels do not run on "
            f"{device.type}; use kernels=none or kernels=rmpad on CPU"
        )
