"""Every packed-attention backend and Liger give the loss and gradients of the padded eager path.

Run on a GPU: `pytest -m gpu tests/gpu`. bf16 compute, so tolerances are bf16-sized.
"""

from __future__ import annotations

import pytest
import torch

from lmms_engine.data.collate import collate_packed, collate_padded
from lmms_engine.kernels import attention
from lmms_engine.kernels.patcher import KernelPatcher
from lmms_engine.models.qwen2 import build_qwen2
from lmms_engine.train.module import CausalLMWithLoss
from tests.samples import random_samples

CONFIG = dict(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False)
LENGTHS = [37, 300, 5, 128, 911, 64]


def _samples():
    return random_samples(LENGTHS, vocab=500, masked_part=3)


def _loss_and_grads(backend: str | None, liger: bool = False):
    """backend None = the padded eager reference (HF sdpa with an attention mask)."""
    torch.manual_seed(0)
    bundle = build_qwen2(name="gpu-test", config=CONFIG, tokenizer=None)
    model = bundle.model.cuda()
    patcher = KernelPatcher(use_rmpad=backend is not None, attn_backend=backend or "sdpa", use_liger_kernel=liger)
    patcher.apply(model, torch.device("cuda"), padding_free=backend is not None)
    module = CausalLMWithLoss(model, patcher.loss_fn())
    samples = _samples()
    batch = collate_packed(samples) if backend else collate_padded(samples, pad_token_id=0)
    batch = batch.to(torch.device("cuda"))
    inputs = batch.model_inputs(("input_ids", "position_ids", "attention_mask"))
    inputs.update(patcher.attention_kwargs(batch))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = module(labels=batch.labels, **inputs) / batch.num_label_tokens
    loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in module.parameters() if p.grad is not None])
    return loss.item(), grads


@pytest.fixture(scope="module")
def reference():
    return _loss_and_grads(None)


@pytest.mark.parametrize("backend", ["sdpa", "torch_varlen", "flex", "flash_attn", "fa4"])
def test_backend_matches_padded_eager(backend, reference):
    if not attention.is_available(backend, torch.device("cuda")):
        pytest.skip(f"{backend} not available")
    loss, grads = _loss_and_grads(backend)
    ref_loss, ref_grads = reference
    assert abs(loss - ref_loss) / ref_loss < 1e-2
    cosine = torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0).item()
    assert cosine > 0.995, cosine
    assert (grads - ref_grads).norm() / ref_grads.norm() < 0.08


@pytest.mark.parametrize("backend", ["torch_varlen", "sdpa", "fa4"])
def test_liger_matches_unpatched(backend, reference):
    if not attention.is_available(backend, torch.device("cuda")):
        pytest.skip(f"{backend} not available")
    loss, grads = _loss_and_grads(backend, liger=True)
    ref_loss, ref_grads = reference
    assert abs(loss - ref_loss) / ref_loss < 1e-2
    cosine = torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0).item()
    assert cosine > 0.99, cosine


def test_auto_picks_a_fast_backend_on_cuda():
    assert attention.resolve_backend("auto", torch.device("cuda")) in ("fa4", "flash_attn", "torch_varlen", "flex")
