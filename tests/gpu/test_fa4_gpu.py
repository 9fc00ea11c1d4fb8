"""kernels.attn_backend=fa4 (FlashAttention-4) against torch's varlen kernel on the GPU.

Tolerances are not guessed: each test measures the noise floor of the same computation in bf16 on this
GPU (torch varlen against an fp32 reference, or two runs of the same step), and asks FA4 to stay within
it. Run on a Hopper / Blackwell GPU with flash-attn-4 installed: `pytest -m gpu tests/gpu/test_fa4_gpu.py`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmms_engine import compat
from lmms_engine.data.collate import collate_packed
from lmms_engine.kernels import attention
from lmms_engine.kernels.patcher import KernelPatcher
from lmms_engine.models.qwen2 import build_qwen2
from lmms_engine.train.module import CausalLMWithLoss
from tests.samples import random_samples

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or not attention.is_available("fa4", torch.device("cuda")),
                                reason="needs a Hopper / Blackwell GPU with flash-attn-4")

CONFIG = dict(vocab_size=512, hidden_size=768, intermediate_size=2048, num_hidden_layers=2, num_attention_heads=6,
              num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=False)
LENGTHS = [37, 300, 5, 128, 911, 64, 2048, 1]


def _qkv(lengths, heads, kv_heads, dim, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    total = sum(lengths)
    q = torch.randn(total, heads, dim, device="cuda", generator=gen)
    k, v = (torch.randn(total, kv_heads, dim, device="cuda", generator=gen) for _ in range(2))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    return q, k, v, cu


def _attention_and_grads(backend, q, k, v, cu, max_len, causal, dtype):
    """Output and (dq, dk, dv) in fp32 of `backend` on q / k / v cast to `dtype` (fp32 + sdpa: the reference)."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out = attention.varlen_attention(*leaves, cu, max_len, None, causal=causal, backend=backend)
    grad = torch.linspace(-1, 1, out.numel(), device="cuda").reshape(out.shape).to(out.dtype)
    out.backward(grad)
    return [t.float() for t in (out, *(leaf.grad for leaf in leaves))]


def _relative_errors(values, reference):
    return [((a - b).norm() / b.norm()).item() for a, b in zip(values, reference)]


@pytest.mark.parametrize("causal,heads,kv_heads,dim", [
    (True, 12, 2, 128),   # Qwen2.5-1.5B decoder
    (True, 16, 16, 64),   # no GQA
    (False, 16, 16, 64),  # Qwen3-VL / Qwen2-Audio encoders
    (False, 16, 16, 128),
])
def test_fa4_is_as_accurate_as_torch_varlen(causal, heads, kv_heads, dim):
    q, k, v, cu = _qkv(LENGTHS, heads, kv_heads, dim)
    reference = _attention_and_grads("sdpa", q, k, v, cu, max(LENGTHS), causal, torch.float32)
    floor = _relative_errors(_attention_and_grads("torch_varlen", q, k, v, cu, max(LENGTHS), causal, torch.bfloat16),
                             reference)
    fa4 = _relative_errors(_attention_and_grads("fa4", q, k, v, cu, max(LENGTHS), causal, torch.bfloat16), reference)
    for name, err, noise in zip(("out", "dq", "dk", "dv"), fa4, floor):
        assert err <= 1.5 * noise + 1e-3, (name, err, noise)


def test_head_dims_fa4_is_not_verified_for_keep_the_next_kernel():
    """Qwen2.5-VL's vision heads (dim 80): flash-attn-4 4.0.0b40's SM90 backward gave a wrong dq there."""
    from lmms_engine.kernels.encoder_attention import encoder_varlen_backend

    cuda = torch.device("cuda")
    assert encoder_varlen_backend(cuda, head_dim=80) == "torch_varlen"
    assert encoder_varlen_backend(cuda, head_dim=64) == "fa4"
    assert attention.resolve_backend("auto", cuda, head_dim=80) != "fa4"
    with pytest.raises(ValueError, match="head dim 80"):
        attention.resolve_backend("fa4", cuda, head_dim=80)


def test_fa4_never_attends_across_documents():
    """A document's output does not change when the other documents of its pack change."""
    q, k, v, cu = _qkv([100, 200], 4, 2, 64)
    out = attention.varlen_attention(*(t.bfloat16() for t in (q, k, v)), cu, 200, None, causal=True, backend="fa4")
    k2, v2 = k.clone(), v.clone()
    k2[:100], v2[:100] = torch.randn_like(k2[:100]), torch.randn_like(v2[:100])
    out2 = attention.varlen_attention(*(t.bfloat16() for t in (q, k2, v2)), cu, 200, None, causal=True, backend="fa4")
    assert torch.equal(out[100:], out2[100:])
    assert not torch.equal(out[:100], out2[:100])


def _model_step(backend: str):
    """Loss and flat fp32 gradients of one packed step of a small Qwen2 on `backend`."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        bundle = build_qwen2(name="fa4-test", config=CONFIG, tokenizer=None)
    patcher = KernelPatcher(use_rmpad=True, attn_backend=backend)
    patcher.apply(bundle.model, torch.device("cuda"), padding_free=True)
    module = CausalLMWithLoss(bundle.model, patcher.loss_fn())
    batch = collate_packed(random_samples(LENGTHS, vocab=500, masked_part=3)).to(torch.device("cuda"))
    inputs = batch.model_inputs(("input_ids", "position_ids"))
    inputs.update(patcher.attention_kwargs(batch))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = module(labels=batch.labels, **inputs) / batch.num_label_tokens
    loss.backward()
    return loss.item(), torch.cat([p.grad.float().flatten() for p in module.parameters() if p.grad is not None])


def test_fa4_model_step_matches_torch_varlen_within_the_gpus_own_noise():
    varlen_loss, varlen_grads = _model_step("torch_varlen")
    again_loss, again_grads = _model_step("torch_varlen")
    sdpa_loss, sdpa_grads = _model_step("sdpa")  # the per-document reference, also bf16
    loss_floor = max(abs(again_loss - varlen_loss), abs(sdpa_loss - varlen_loss))
    grad_floor = max((g - varlen_grads).norm().item() / varlen_grads.norm().item() for g in (again_grads, sdpa_grads))
    fa4_loss, fa4_grads = _model_step("fa4")
    assert abs(fa4_loss - varlen_loss) <= 2 * loss_floor + 1e-4 * abs(varlen_loss), (fa4_loss, varlen_loss, loss_floor)
    grad_error = (fa4_grads - varlen_grads).norm().item() / varlen_grads.norm().item()
    assert grad_error <= 2 * grad_floor + 1e-3, (grad_error, grad_floor)


def test_fa4_op_compiles_without_graph_break():
    """The custom op is one opaque node to dynamo: a compiled block around it breaks no graph and
    recompiles at most once (dynamic token / document counts) over packs of changing layout."""
    torch.compiler.reset()
    counters = compat.dynamo_counters()
    counters.clear()
    proj = torch.nn.Linear(64, 3 * 4 * 64, device="cuda", dtype=torch.bfloat16)

    @torch.compile
    def block(x, cu, max_len):
        q, k, v = proj(F.rms_norm(x, (64,))).unflatten(-1, (3, 4, 64)).unbind(1)
        return attention.varlen_attention(q, k, v, cu, max_len, None, causal=True, backend="fa4").sum()

    for lengths in ([64, 200], [300, 5, 17], [1000], [33, 33, 33, 900]):
        x = torch.randn(sum(lengths), 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
        block(x, cu, max(lengths)).backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] <= 2
    torch.compiler.reset()


def test_auto_picks_fa4_where_it_runs():
    assert attention.resolve_backend("auto", torch.device("cuda")) == "fa4"


def test_compat_fa4_backward_gives_the_autograd_functions_gradients():
    """compat.fa4_varlen_backward (FA4's private backward kernel) = FA4's own autograd.Function."""
    from flash_attn.cute import flash_attn_varlen_func

    q, k, v, cu = _qkv([300, 700], 8, 2, 128)
    leaves = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    out, lse = flash_attn_varlen_func(*leaves, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=700, max_seqlen_k=700,
                                      causal=True, return_lse=True)
    dout = torch.randn_like(out)
    out.backward(dout)
    ours = compat.fa4_varlen_backward(dout, *(t.detach() for t in leaves), out.detach(), lse.detach(), cu, 700,
                                      128 ** -0.5, True)
    for mine, leaf in zip(ours, leaves):  # the same kernel; dq's atomic adds may reorder, so bf16 rounding
        torch.testing.assert_close(mine, leaf.grad)
