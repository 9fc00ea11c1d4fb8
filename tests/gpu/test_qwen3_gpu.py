"""Qwen3 and Qwen3-VL on the GPU: packed varlen attention (decoder causal; the Qwen3-VL vision tower
bidirectional per image / frame) and our Liger registry patches (q / k norms included) give the loss
and gradients of the padded sdpa path (transformers' stock forward for Qwen3-VL), within bf16 tolerance.

Run on a GPU: `pytest -m gpu tests/gpu/test_qwen3_gpu.py`.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lmms_engine.data.collate import collate_packed, collate_padded
from lmms_engine.data.types import Sample
from lmms_engine.kernels.encoder_attention import encoder_varlen_backend
from lmms_engine.kernels.patcher import KernelPatcher
from lmms_engine.models.qwen3 import build_qwen3
from lmms_engine.train.module import CausalLMWithLoss
from tests.unit import test_qwen3_vl as vl

TEXT = dict(vocab_size=260, hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=64, max_position_embeddings=4096, tie_word_embeddings=True)


def _text_samples() -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for i, n in enumerate((300, 41, 900, 128)):
        ids = rng.integers(0, 256, size=n, dtype=np.int32)
        labels = ids.copy()
        labels[: n // 2] = -100
        out.append(Sample(ids, labels, f"s{i}"))
    return out


def _text_loss_and_grads(packed: bool, liger: bool):
    torch.manual_seed(0)
    model = build_qwen3(name="t", config=TEXT).model.cuda()
    patcher = KernelPatcher(use_rmpad=packed, attn_backend="torch_varlen" if packed else "sdpa", use_liger_kernel=liger)
    patcher.apply(model, torch.device("cuda"), padding_free=packed)
    module = CausalLMWithLoss(model, patcher.loss_fn())
    batch = collate_packed(_text_samples()) if packed else collate_padded(_text_samples(), pad_token_id=257)
    batch = batch.to(torch.device("cuda"))
    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = module(labels=batch["labels"], **inputs, **patcher.attention_kwargs(batch)) / batch["num_label_tokens"]
    loss.backward()
    return loss.item(), torch.cat([p.grad.float().flatten() for p in module.parameters() if p.grad is not None])


@pytest.mark.parametrize("liger", [False, True], ids=["varlen", "varlen+liger"])
def test_qwen3_packed_matches_padded_sdpa(liger, monkeypatch):
    from transformers.models.qwen3 import modeling_qwen3

    # Liger's rope swap is module-level: restored after the test.
    monkeypatch.setattr(modeling_qwen3, "apply_rotary_pos_emb", modeling_qwen3.apply_rotary_pos_emb)
    ref_loss, ref_grads = _text_loss_and_grads(packed=False, liger=False)
    loss, grads = _text_loss_and_grads(packed=True, liger=liger)
    assert abs(loss - ref_loss) < 2e-2 * max(1.0, abs(ref_loss))
    assert torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0).item() > 0.99


@pytest.fixture(scope="module")
def vl_setup():
    torch.manual_seed(0)
    bundle = vl._preset("tiny_qwen3_vl")()
    encoded = []
    for parts, image_seeds, video_seeds in vl.RECORDS:
        encoded.append(vl._encode(bundle.processor, parts, [vl._image(s) for s in image_seeds],
                                  [vl._video(s) for s in video_seeds]))
    return bundle, [{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in r.items()} for r in encoded]


def _cuda_bundle(bundle):
    moved = copy.copy(bundle)
    moved.model = copy.deepcopy(bundle.model).cuda()
    return moved


@pytest.mark.parametrize("liger", [False, True], ids=["varlen", "varlen+liger"])
def test_qwen3_vl_packed_matches_stock_padded(vl_setup, liger, monkeypatch):
    from transformers.models.qwen3_vl import modeling_qwen3_vl

    monkeypatch.setattr(modeling_qwen3_vl, "apply_rotary_pos_emb", modeling_qwen3_vl.apply_rotary_pos_emb)
    bundle, records = vl_setup
    stock = _cuda_bundle(bundle).model
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref_loss, ref_grads = vl._padded_loss_and_grads(stock, records)
    ours = _cuda_bundle(bundle)
    patcher = KernelPatcher(use_rmpad=True, attn_backend="torch_varlen", use_liger_kernel=liger)
    patcher.apply(ours.model, torch.device("cuda"), padding_free=True, encoders=ours.encoders, decoder_path=ours.decoder_path)
    blocks = ours.model.model.visual.blocks
    vision = ours.model.model.visual.config
    fastest = encoder_varlen_backend(torch.device("cuda"), head_dim=vision.hidden_size // vision.num_heads)
    assert [getattr(b.attn, "lmms_varlen_backend", None) for b in blocks] == [fastest] * len(blocks)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, grads = vl._packed_loss_and_grads(ours, ours.model, records, patcher=patcher)
    assert abs(loss - ref_loss) < 2e-2 * max(1.0, abs(ref_loss))
    flat = lambda g: torch.cat([g[n].float().flatten() for n in sorted(g)])  # noqa: E731
    assert torch.nn.functional.cosine_similarity(flat(grads), flat(ref_grads), dim=0).item() > 0.99


def test_qwen3_vl_unaligned_vision_mlp_is_padded_on_cuda_and_exact(vl_setup):
    """A vision MLP 300 wide (like Qwen3-VL-8B's 4304, not a multiple of 128) is padded by the
    patcher on CUDA (to 384) and gives the unpadded loss and gradients (bf16 autocast)."""
    import os

    from omegaconf import OmegaConf

    from lmms_engine.models.qwen3_vl import build_qwen3_vl

    _, records = vl_setup
    preset = OmegaConf.to_container(OmegaConf.load(os.path.join(vl.CONF_MODEL, "tiny_qwen3_vl.yaml")).config)
    preset["vision_config"]["intermediate_size"] = 300
    results = []
    for pad in (False, True):
        torch.manual_seed(0)
        bundle = build_qwen3_vl(name="t", config=preset)
        bundle.model.cuda()
        patcher = KernelPatcher(use_rmpad=True, attn_backend="torch_varlen", pad_encoder_mlps=pad)
        patcher.apply(bundle.model, torch.device("cuda"), padding_free=True, encoders=bundle.encoders,
                      decoder_path=bundle.decoder_path)
        pads = [getattr(b.mlp, "lmms_pad", 0) for b in bundle.model.model.visual.blocks]
        assert pads == [84 if pad else 0] * len(pads)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            results.append(vl._packed_loss_and_grads(bundle, bundle.model, records, patcher=patcher))
    (ref_loss, ref_grads), (loss, grads) = results
    assert abs(loss - ref_loss) < 1e-3 * max(1.0, abs(ref_loss))
    flat = lambda g: torch.cat([g[n].float().flatten() for n in sorted(g)])  # noqa: E731
    assert torch.nn.functional.cosine_similarity(flat(grads), flat(ref_grads), dim=0).item() > 0.999
