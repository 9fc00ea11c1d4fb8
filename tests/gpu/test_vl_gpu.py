"""Qwen2.5-VL on the GPU: packed varlen attention (decoder causal, vision tower bidirectional) and
our Liger registry patch give the loss and gradients of the padded sdpa path, within bf16 tolerance.

Run on a GPU: `pytest -m gpu tests/gpu`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lmms_engine.data.batch import Batch
from lmms_engine.data.collate import (
    collate_packed,
    collate_padded,
    mrope_position_ids_packed,
    mrope_position_ids_padded,
)
from lmms_engine.data.types import MediaItem, Sample
from lmms_engine.kernels import attention
from lmms_engine.kernels.encoder_attention import encoder_varlen_backend
from lmms_engine.kernels.patcher import KernelPatcher
from lmms_engine.models.mrope import MropeSpec
from lmms_engine.models.qwen2_5_vl import build_qwen2_5_vl
from lmms_engine.train.module import CausalLMWithLoss

PRESET = Path(__file__).resolve().parents[2] / "conf" / "model" / "tiny_qwen2_5_vl.yaml"
IMAGES = [(56, 84), (112, 112), None, (84, 168)]  # one sample per entry; None = text only


def _bundle():
    values = yaml.safe_load(PRESET.read_text())
    values.pop("_target_")
    torch.manual_seed(0)
    return build_qwen2_5_vl(**values)


def _encoded(bundle):
    """Samples (media: the processor's image grids) and their pixels, one per IMAGES entry."""
    rng = np.random.default_rng(0)
    out = []
    for i, size in enumerate(IMAGES):
        parts = [{"type": "image_url", "image_url": "x.png"}] if size else []
        messages = [{"role": "user", "content": [*parts, {"type": "text", "text": f"Question {i}: what is it?" * (i + 1)}]},
                    {"role": "assistant", "content": f"An answer of sample {i}." * (i + 2)}]
        text = bundle.tokenizer.apply_chat_template(messages, tokenize=False)
        images = [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))] if size else None
        enc = bundle.processor(text=[text], images=images, return_tensors="pt")
        ids = enc["input_ids"][0].numpy().astype(np.int32)
        labels = ids.copy()
        labels[: len(ids) // 2] = -100
        media = tuple(MediaItem("image", "x.png", tuple(g)) for g in enc["image_grid_thw"].tolist()) if size else ()
        out.append((Sample(ids, labels, f"s{i}", media), enc.get("pixel_values")))
    return out


def _batch(bundle, packed: bool) -> Batch:
    encoded = _encoded(bundle)
    samples = [sample for sample, _ in encoded]
    spec = MropeSpec.from_config(bundle.model.config)
    if packed:
        batch = collate_packed(samples).with_fields(position_ids=mrope_position_ids_packed(samples, spec))
    else:
        batch = collate_padded(samples, pad_token_id=0).with_fields(position_ids=mrope_position_ids_padded(samples, spec))
    return batch.with_fields(pixel_values=torch.cat([p for _, p in encoded if p is not None]),
                             image_grid_thw=torch.tensor([m.grid_thw for s in samples for m in s.media]))


def _loss_and_grads(packed: bool, liger: bool = False, backend: str = "torch_varlen"):
    bundle = _bundle()
    model = bundle.model.cuda()
    patcher = KernelPatcher(use_rmpad=packed, attn_backend=backend if packed else "sdpa", use_liger_kernel=liger)
    patcher.apply(model, torch.device("cuda"), padding_free=packed, encoders=bundle.encoders,
          decoder_path=bundle.decoder_path)
    module = CausalLMWithLoss(model, patcher.loss_fn(), bundle.hidden_states)
    batch = _batch(bundle, packed).to(torch.device("cuda"))
    inputs = batch.model_inputs(bundle.input_keys)
    inputs.update(patcher.attention_kwargs(batch))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = module(labels=batch.labels, **inputs) / batch.num_label_tokens
    loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in module.parameters() if p.grad is not None])
    return loss.item(), grads


def test_vision_tower_gets_a_bidirectional_varlen_kernel():
    bundle = _bundle()
    KernelPatcher(use_rmpad=True, attn_backend="torch_varlen").apply(bundle.model.cuda(), torch.device("cuda"), padding_free=True, encoders=bundle.encoders,
          decoder_path=bundle.decoder_path)
    blocks = bundle.model.model.visual.blocks
    fastest = encoder_varlen_backend(torch.device("cuda"))  # fa4 where flash-attn-4 runs, else torch_varlen
    assert [getattr(b.attn, "lmms_varlen_backend", None) for b in blocks] == [fastest] * len(blocks)
    assert bundle.model.model.visual.config._attn_implementation == "sdpa"  # what a saved config names
    assert bundle.model.model.language_model.config._attn_implementation == "lmms_torch_varlen"


@pytest.fixture(scope="module")
def padded_reference():
    return _loss_and_grads(packed=False)


@pytest.mark.parametrize("liger,backend", [(False, "torch_varlen"), (True, "torch_varlen"), (False, "fa4"), (True, "fa4")],
                         ids=["varlen", "varlen+liger", "fa4", "fa4+liger"])
def test_packed_vl_matches_padded_sdpa(liger, backend, padded_reference):
    if not attention.is_available(backend, torch.device("cuda")):
        pytest.skip(f"{backend} is not available")
    ref_loss, ref_grads = padded_reference
    loss, grads = _loss_and_grads(packed=True, liger=liger, backend=backend)
    assert abs(loss - ref_loss) < 2e-2 * max(1.0, abs(ref_loss))
    cosine = torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0).item()
    assert cosine > 0.99
