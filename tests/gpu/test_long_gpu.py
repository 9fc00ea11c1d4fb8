"""One GPU, long sequences: the plain (non-Liger) loss never holds the full logits.

Run on a GPU: `pytest -m gpu tests/gpu/test_long_gpu.py`.
"""

from __future__ import annotations

import torch

from lmms_engine.kernels.loss import CHUNK_TOKENS, cross_entropy_sum

TOKENS, HIDDEN, VOCAB = 65536, 1536, 151936  # Qwen2.5-1.5B's lm-head on a 64k-token sequence


def test_chunked_loss_peak_memory_is_a_chunk_not_the_full_logits():
    torch.manual_seed(0)
    hidden = (torch.randn(1, TOKENS, HIDDEN, device="cuda") * 0.02).bfloat16().requires_grad_()
    weight = (torch.randn(VOCAB, HIDDEN, device="cuda") * 0.02).bfloat16().requires_grad_()
    labels = torch.randint(0, VOCAB, (1, TOKENS), device="cuda")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = cross_entropy_sum(hidden, weight, labels)
    loss.backward()
    torch.cuda.synchronize()
    peak_gb = (torch.cuda.max_memory_allocated() - base) / 1e9
    full_logits_gb = TOKENS * VOCAB * 4 / 1e9  # 40 GB in fp32
    chunk_logits_gb = CHUNK_TOKENS * VOCAB * 4 / 1e9
    assert peak_gb < 4 * chunk_logits_gb + 2.0 < full_logits_gb / 3, (peak_gb, chunk_logits_gb)
    # The value: log(VOCAB) per token for near-uniform logits.
    assert abs(loss.item() / TOKENS - torch.log(torch.tensor(float(VOCAB))).item()) < 0.05
