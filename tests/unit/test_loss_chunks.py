"""The non-Liger loss runs the lm-head in chunks: same loss and gradients, never the full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmms_engine.kernels.loss import IGNORE_INDEX, cross_entropy_sum

TOKENS, HIDDEN, VOCAB = 50, 16, 300


def _inputs():
    torch.manual_seed(0)
    hidden = torch.randn(1, TOKENS, HIDDEN, requires_grad=True)
    weight = torch.randn(VOCAB, HIDDEN, requires_grad=True)
    labels = torch.randint(0, VOCAB, (1, TOKENS))
    labels[0, ::7] = IGNORE_INDEX
    return hidden, weight, labels


def _full_logits_loss(hidden, weight, labels):
    logits = F.linear(hidden, weight).float().view(-1, VOCAB)
    return F.cross_entropy(logits, labels.view(-1), ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.mark.parametrize("chunk", [7, 16, 50, 4096])
def test_chunked_loss_and_gradients_equal_the_full_logits(chunk):
    hidden, weight, labels = _inputs()
    expected = _full_logits_loss(hidden, weight, labels)
    expected.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    got = cross_entropy_sum(hidden, weight, labels, chunk_tokens=chunk)
    got.backward()
    assert torch.allclose(got, expected, atol=1e-4)
    assert torch.allclose(hidden.grad, grads[0], atol=1e-5) and torch.allclose(weight.grad, grads[1], atol=1e-5)


def test_no_tensor_as_large_as_the_full_logits_is_kept_for_backward():
    hidden, weight, labels = _inputs()
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = cross_entropy_sum(hidden, weight, labels, chunk_tokens=10)
    loss.backward()
    assert max(saved) < TOKENS * VOCAB / 2  # chunks of 10 tokens: at most 10 x VOCAB logits at a time
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _full_logits_loss(hidden, weight, labels)
    assert max(saved) >= TOKENS * VOCAB  # the check sees the full logits where they are kept
