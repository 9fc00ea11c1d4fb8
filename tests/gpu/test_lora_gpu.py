"""LoRA on one GPU as the framework runs it (parallel=single, bf16: FSDP2 over one rank): the frozen
base is stored in bf16 only (no fp32 copy, no gradient, no Adam state), the adapters train in fp32,
and a few steps on one batch lower the loss.

Run on a GPU: `pytest -m gpu tests/gpu/test_lora_gpu.py`.
"""

from __future__ import annotations

import torch

from lmms_engine.config import LoraSettings
from lmms_engine.models.qwen2 import build_qwen2
from lmms_engine.parallel.single import single_device
from lmms_engine.train.lora import apply_lora, is_adapter
from lmms_engine.train.module import CausalLMWithLoss
from lmms_engine.train.optim import build_adamw
from tests.unit.test_lora_strategies import _summed_ce
from tests.unit.test_packed_parity import TINY


def test_single_gpu_lora_keeps_a_bf16_base_and_fp32_adapters():
    strategy = single_device(device="cuda", precision="bf16")
    strategy.setup()
    try:
        torch.manual_seed(0)
        bundle = build_qwen2(name="t", config=TINY)
        apply_lora(bundle.model, LoraSettings(rank=8, alpha=16.0), bundle.components(), frozen_dtype=strategy.frozen_dtype())
        strategy.checkpoint_frozen = False
        module = strategy.prepare(CausalLMWithLoss(bundle.model, _summed_ce, bundle.hidden_states), bundle.shard_units,
                                  bundle.encoder_units)
        optimizer = strategy.build_optimizer(
            module, lambda m: build_adamw(m, lr=1e-2, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8))
        ids = torch.randint(0, 256, (1, 64), device="cuda")
        position_ids = torch.arange(64, device="cuda")[None]
        losses = []
        for _ in range(5):
            loss = module(labels=ids, input_ids=ids, position_ids=position_ids)
            strategy.backward(loss, module)
            strategy.step(module, optimizer, max_norm=1.0, loss=loss.item())
            losses.append(loss.item())
        named = dict(module.named_parameters())
        adapters = {n for n in named if is_adapter(n)}
        assert {named[n].dtype for n in adapters} == {torch.float32}
        assert {named[n].dtype for n in set(named) - adapters} == {torch.bfloat16}
        assert {id(p) for p in optimizer.state} == {id(named[n]) for n in adapters}
        assert losses[-1] < losses[0], losses
    finally:
        strategy.teardown()
