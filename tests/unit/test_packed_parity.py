"""Packed training is exact: the same samples packed or padded give the same loss and gradients,
and gradient accumulation equals one big micro-batch (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from lmms_engine.data.collate import collate_packed, collate_padded
from lmms_engine.data.types import Sample
from lmms_engine.kernels.patcher import KernelPatcher
from lmms_engine.models.qwen2 import build_qwen2
from lmms_engine.train.loop import StepContext, train_step
from lmms_engine.train.module import CausalLMWithLoss
from lmms_engine.parallel.single import SingleDevice
from tests.conftest import compose_config
from tests.samples import random_samples

TINY = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)


def _samples(lengths=(17, 40, 5, 33), seed=0) -> list[Sample]:
    return random_samples(lengths, seed)


def _module(padding_free: bool, backend: str = "sdpa", use_rmpad: bool = False) -> tuple[CausalLMWithLoss, KernelPatcher]:
    torch.manual_seed(0)
    bundle = build_qwen2(name="t", config=TINY)
    patcher = KernelPatcher(use_rmpad=use_rmpad, attn_backend=backend)
    patcher.apply(bundle.model, torch.device("cpu"), padding_free=padding_free)
    return CausalLMWithLoss(bundle.model, patcher.loss_fn()), patcher


def _loss_and_grads(module, patcher, batch) -> tuple[float, dict[str, torch.Tensor]]:
    inputs = batch.model_inputs(("input_ids", "position_ids", "attention_mask"))
    inputs.update(patcher.attention_kwargs(batch))
    loss = module(labels=batch.labels, **inputs) / batch.num_label_tokens
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in module.named_parameters()}


def test_packed_and_padded_give_same_loss_and_gradients():
    samples = _samples()
    packed = _loss_and_grads(*_module(padding_free=True), collate_packed(samples))
    padded = _loss_and_grads(*_module(padding_free=False), collate_padded(samples, pad_token_id=257))
    assert packed[0] == pytest.approx(padded[0], abs=1e-5)
    for name, grad in packed[1].items():
        torch.testing.assert_close(grad, padded[1][name], atol=1e-4, rtol=1e-4, msg=name)


def test_packed_attention_does_not_cross_samples():
    """Changing one sample's tokens leaves the other samples' per-token losses unchanged."""
    module, patcher = _module(padding_free=True)
    samples = _samples()
    changed = list(samples)
    changed[0] = Sample(samples[0].input_ids[::-1].copy(), samples[0].labels, "s0")
    outputs = []
    for group in (samples, changed):
        batch = collate_packed(group)
        hidden = module.lm.model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                                 **patcher.attention_kwargs(batch)).last_hidden_state
        outputs.append(hidden)
    first = len(samples[0])
    torch.testing.assert_close(outputs[0][:, first:], outputs[1][:, first:], atol=1e-6, rtol=0)
    assert not torch.allclose(outputs[0][:, :first], outputs[1][:, :first])


def test_rmpad_unpadding_matches_padded():
    samples = _samples()
    unpadded = _loss_and_grads(*_module(padding_free=True, use_rmpad=True), collate_padded(samples, 257).unpadded())
    padded = _loss_and_grads(*_module(padding_free=False), collate_padded(samples, 257))
    assert unpadded[0] == pytest.approx(padded[0], abs=1e-5)


def _one_step(micro_batches: list[list[int]], samples) -> tuple[float, dict[str, torch.Tensor]]:
    module, patcher = _module(padding_free=True)
    strategy = SingleDevice(device="cpu")
    optimizer = torch.optim.SGD(module.parameters(), lr=0.0)  # keep the gradients, change nothing
    ctx = StepContext(module=module, optimizer=optimizer, strategy=strategy,
                      collate=lambda indices: collate_packed([samples[i] for i in indices]),
                      attention_kwargs=patcher.attention_kwargs, flops_fn=lambda batch: 0.0)
    strategy.optimizer_step = lambda opt, mod: None  # inspect gradients before they are cleared
    stats = train_step(ctx, micro_batches)
    return stats["loss"], {n: p.grad.clone() for n, p in module.named_parameters()}


def test_grad_accumulation_equals_one_micro_batch():
    """Token-normalised over the whole step, not a mean of per-micro-batch means."""
    samples = _samples(lengths=(50, 7, 23, 64, 3, 31))
    whole = _one_step([[0, 1, 2, 3, 4, 5]], samples)
    halves = _one_step([[0, 1, 2], [3, 4, 5]], samples)
    assert halves[0] == pytest.approx(whole[0], abs=1e-6)
    for name, grad in whole[1].items():
        torch.testing.assert_close(halves[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_tiny_preset_composes_and_builds():
    cfg = compose_config()
    from hydra.utils import instantiate

    bundle = instantiate(cfg.model, _convert_="all")
    n_params = sum(p.numel() for p in bundle.model.parameters())
    assert 1e6 < n_params < 2e7
    assert bundle.tokenizer.convert_tokens_to_ids("<|im_end|>") < bundle.model.config.vocab_size
