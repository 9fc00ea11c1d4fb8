"""Qwen2.5-VL with only the vision blocks checkpointed, under torch.compile (and FP8): the setting that
crashed on the H200 with `CheckpointError: Recomputed values ... saved dtype bfloat16, recomputed
float32` (the vision tower's fp32 rotary cos / sin, cast to bf16 by FSDP2 in forward but not in the
recompute on torch < 2.13). Trains a few steps and matches the eager run.
Run: `pytest -m gpu tests/gpu/test_vl_compile_gpu.py`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmms_engine.kernels.fp8 import MIN_CAPABILITY
from lmms_engine.kernels.patcher import KernelPatcher
from lmms_engine.parallel.single import single_device
from lmms_engine.train.module import CausalLMWithLoss
from lmms_engine.train.optim import build_adamw
from tests.gpu.test_vl_gpu import _batch, _bundle

HAS_FP8 = torch.cuda.is_available() and torch.cuda.get_device_capability() >= MIN_CAPABILITY
STEPS = 3


def _vl_steps(compile: bool, fp8: bool) -> list[float]:
    torch.compiler.reset()
    strategy = single_device(device="cuda", precision="bf16", activation_checkpointing=False,
                             encoder_checkpointing=True, compile=compile)
    strategy.setup()
    try:
        bundle = _bundle()
        patcher = KernelPatcher(use_rmpad=True, attn_backend="auto", use_liger_kernel=True, fp8=fp8)
        patcher.apply(bundle.model.cuda(), strategy.device, padding_free=True, encoders=bundle.encoders,
                      decoder_path=bundle.decoder_path, compiled=compile)
        module = strategy.prepare(CausalLMWithLoss(bundle.model, patcher.loss_fn(), bundle.hidden_states),
                                  bundle.shard_units, bundle.encoder_units)
        optimizer = build_adamw(module, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8)
        batch = _batch(bundle, packed=True).to(strategy.device)
        inputs = {**batch.model_inputs(bundle.input_keys), **patcher.attention_kwargs(batch)}
        losses = []
        for _ in range(STEPS):
            loss = module(labels=batch.labels, **inputs) / batch.num_label_tokens
            strategy.backward(loss, module)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses
    finally:
        strategy.teardown()
        torch.compiler.reset()


@pytest.fixture(scope="module")
def eager_losses():
    return _vl_steps(compile=False, fp8=False)


@pytest.mark.parametrize("fp8", [False, True], ids=["compile", "compile+fp8"])
def test_vl_with_vision_checkpointing_compiles_and_trains_like_eager(fp8, eager_losses):
    if fp8 and not HAS_FP8:
        pytest.skip("no FP8 tensor cores on this GPU")
    if fp8:
        pytest.importorskip("torchao.float8")
    losses = _vl_steps(compile=True, fp8=fp8)
    assert all(np.isfinite(losses))
    np.testing.assert_allclose(losses, eager_losses, rtol=5e-2 if fp8 else 2e-2)
