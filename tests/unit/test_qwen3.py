"""Qwen3 dense: the builder and presets, packed == padded (loss and gradients) through the q / k
RMSNorm, FLOPs with its explicit head_dim, and the Liger registry patch (q / k norms included)."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra.utils import instantiate

from lmms_engine.data.collate import collate_packed, collate_padded
from lmms_engine.data.types import Sample
from lmms_engine.kernels.patcher import KernelPatcher
from lmms_engine.models.flops import matmul_params
from lmms_engine.models.qwen3 import build_qwen3
from lmms_engine.train.module import CausalLMWithLoss
from tests.conftest import compose_config
from tests.samples import random_samples

# head_dim 32 with hidden 64 and 4 heads: q_proj is 64 -> 128, not square, as in real Qwen3 shapes.
TINY = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=1024, tie_word_embeddings=True)


def _samples(lengths=(17, 40, 5, 33)) -> list[Sample]:
    return random_samples(lengths)


def _loss_and_grads(padding_free: bool, batch) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    bundle = build_qwen3(name="t", config=TINY)
    # q / k norms start at ones; random weights make a norm that is skipped or misapplied show up.
    with torch.no_grad():
        for layer in bundle.model.model.layers:
            layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
            layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    patcher = KernelPatcher(attn_backend="sdpa")
    patcher.apply(bundle.model, torch.device("cpu"), padding_free=padding_free)
    module = CausalLMWithLoss(bundle.model, patcher.loss_fn())
    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
    loss = module(labels=batch["labels"], **inputs, **patcher.attention_kwargs(batch)) / batch["num_label_tokens"]
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in module.named_parameters()}


def test_packed_and_padded_give_same_loss_and_gradients():
    samples = _samples()
    packed = _loss_and_grads(True, collate_packed(samples))
    padded = _loss_and_grads(False, collate_padded(samples, pad_token_id=257))
    assert packed[0] == pytest.approx(padded[0], abs=1e-5)
    assert any("q_norm" in name for name in packed[1])
    for name, grad in packed[1].items():
        torch.testing.assert_close(grad, padded[1][name], atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("preset", ["tiny_qwen3", "qwen3_0_6b", "qwen3_1_7b", "qwen3_4b", "qwen3_8b"])
def test_presets_compose_with_published_sizes(preset):
    """Real shapes built on the meta device (no memory): parameter counts as Qwen publishes them."""
    cfg = compose_config(f"model={preset}")
    expected = {"tiny_qwen3": (1e6, 2e7), "qwen3_0_6b": (0.55e9, 0.65e9), "qwen3_1_7b": (1.6e9, 1.8e9),
                "qwen3_4b": (3.9e9, 4.1e9), "qwen3_8b": (8.1e9, 8.3e9)}[preset]
    with torch.device("meta"):
        bundle = instantiate(cfg.model, structure_only=True, _convert_="all")
    assert bundle.model.config.model_type == "qwen3"
    n_params = sum(p.numel() for p in bundle.model.parameters())
    assert expected[0] < n_params < expected[1], n_params


def test_flops_count_the_explicit_head_dim():
    bundle = build_qwen3(name="t", config=TINY, structure_only=True)
    counted = sum(p.numel() for n, p in bundle.model.named_parameters()
                  if p.dim() == 2 and "embed_tokens" not in n) + TINY["vocab_size"] * TINY["hidden_size"]
    assert matmul_params(bundle.model.config) == counted  # tied lm_head counted once as a matmul


def test_builder_errors_are_named():
    with pytest.raises(ValueError, match="model 'x': set model.pretrained"):
        build_qwen3(name="x")
    with pytest.raises(ValueError, match="vocab_size"):
        build_qwen3(name="x", config={**TINY, "vocab_size": 100})


def test_pretrained_of_another_family_is_refused(tmp_path):
    from transformers import Qwen2Config

    from lmms_engine.models.qwen3 import qwen3_hf_config

    Qwen2Config(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is a 'qwen2' model; this builder supports \\('qwen3',\\)"):
        qwen3_hf_config(str(tmp_path), None, False)


def test_liger_registry_patches_qk_norms(monkeypatch):
    pytest.importorskip("liger_kernel")
    from transformers.models.qwen3 import modeling_qwen3

    from lmms_engine.kernels.liger import apply_liger

    monkeypatch.setattr(modeling_qwen3, "apply_rotary_pos_emb", modeling_qwen3.apply_rotary_pos_emb)
    model = copy.deepcopy(build_qwen3(name="t", config=TINY).model)
    (summary,) = apply_liger(model)
    layers = len(model.model.layers)
    assert f"qwen3 (lmms_engine registry): {4 * layers + 1} RMSNorm" in summary
    attn = model.model.layers[0].self_attn
    assert "forward" in vars(attn.q_norm) and "forward" in vars(attn.k_norm)
    assert "forward" in vars(model.model.layers[0].mlp)
    assert modeling_qwen3.apply_rotary_pos_emb.__name__ == "liger_rotary_pos_emb"
