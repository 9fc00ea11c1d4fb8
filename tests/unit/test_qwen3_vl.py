"""Qwen3-VL: the tiny preset with its built-in processor, the packed forward (one tower call, DeepStack
through the generic decoder kwargs) against transformers' stock padded forward (loss and gradients),
mrope positions against transformers' `get_rope_index` (images, and videos with `<t seconds>`
timestamps), the vision FLOPs, the Liger patch and the builder's errors."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

pytest.importorskip("torchvision")
from PIL import Image  # noqa: E402
from transformers.video_utils import VideoMetadata  # noqa: E402

from lmms_engine.kernels.patcher import KernelPatcher  # noqa: E402
from lmms_engine.models.mrope import MropeSample, mrope_position_ids, packed_mrope_position_ids  # noqa: E402
from lmms_engine.models.qwen3_vl import build_qwen3_vl  # noqa: E402

CONF_MODEL = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "model")


def _preset(name: str) -> dict:
    with initialize_config_dir(config_dir=os.path.abspath(CONF_MODEL), version_base="1.3"):
        cfg = compose(config_name=name)
    return instantiate(cfg, _convert_="all", _partial_=True)


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    return _preset("tiny_qwen3_vl")()


def _image(seed: int, size=(100, 130)) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (*size, 3), dtype=np.uint8))


def _video(seed: int, frames=4, size=(64, 96)) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 255, (frames, *size, 3), dtype=np.uint8)


def _encode(processor, parts: list[str], images=(), videos=()) -> dict:
    """One record through transformers' own processor (its chat template and expansion)."""
    content = [{"type": kind} if kind in ("image", "video") else {"type": "text", "text": kind} for kind in parts]
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": "a fine answer"}]
    text = processor.apply_chat_template(messages, tokenize=False)
    kwargs = {}
    if videos:
        metadata = [VideoMetadata(total_num_frames=len(v), fps=2.0, frames_indices=list(range(len(v)))) for v in videos]
        kwargs = {"videos": list(videos), "videos_kwargs": {"video_metadata": metadata, "do_sample_frames": False}}
    return dict(processor(text=[text], images=list(images) or None, return_tensors="pt", **kwargs))


RECORDS = [
    (["image", "what is it?"], [0], []),
    (["a clip", "video", "and", "image"], [1], [2]),  # video before image in the sequence
    (["video", "two frames"], [], [3]),
]


@pytest.fixture(scope="module")
def encoded(bundle):
    out = []
    for parts, image_seeds, video_seeds in RECORDS:
        out.append(_encode(bundle.processor, parts, [_image(s) for s in image_seeds], [_video(s) for s in video_seeds]))
    return out


def _labels(record: dict) -> torch.Tensor:
    labels = record["input_ids"].clone()
    labels[record["mm_token_type_ids"] != 0] = -100  # visual tokens are never targets
    return labels


def _cat(records, key):
    parts = [r[key] for r in records if key in r]
    return torch.cat(parts) if parts else None


def _sum_loss(model, hidden, labels) -> torch.Tensor:
    logits = model.lm_head(hidden).float()
    return torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum")


def _padded_loss_and_grads(model, records) -> tuple[float, dict]:
    """transformers' stock forward on a right-padded batch (positions by its own get_rope_index)."""
    length = max(r["input_ids"].shape[1] for r in records)
    pad = lambda t, v: torch.nn.functional.pad(t, (0, length - t.shape[1]), value=v)  # noqa: E731
    out = model.model(
        input_ids=torch.cat([pad(r["input_ids"], 0) for r in records]),
        attention_mask=torch.cat([pad(r["attention_mask"], 0) for r in records]),
        mm_token_type_ids=torch.cat([pad(r["mm_token_type_ids"], 0) for r in records]),
        pixel_values=_cat(records, "pixel_values"), image_grid_thw=_cat(records, "image_grid_thw"),
        pixel_values_videos=_cat(records, "pixel_values_videos"), video_grid_thw=_cat(records, "video_grid_thw"),
    )
    loss = sum(_sum_loss(model, out.last_hidden_state[i, : r["input_ids"].shape[1]], _labels(r)[0])
               for i, r in enumerate(records))
    count = sum(int((_labels(r)[0, 1:] != -100).sum()) for r in records)
    (loss / count).backward()
    return (loss / count).item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _packed_loss_and_grads(bundle, model, records, patcher: KernelPatcher | None = None) -> tuple[float, dict]:
    """Our path: one packed row, per-sample mrope positions, the family forward, the packed backend
    (a patcher already applied to `model`, or CPU sdpa)."""
    spec = bundle.data_extras["mrope_spec"]
    samples = [MropeSample(r["input_ids"][0].cpu().numpy(), _np(r, "image_grid_thw"), _np(r, "video_grid_thw"))
               for r in records]
    lengths = [r["input_ids"].shape[1] for r in records]
    device = records[0]["input_ids"].device
    cu_seqlens = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32, device=device)
    if patcher is None:
        patcher = KernelPatcher(attn_backend="sdpa")
        patcher.apply(model, device, padding_free=True, encoders=bundle.encoders, decoder_path=bundle.decoder_path)
    media = {key: _cat(records, key) for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")}
    hidden = bundle.hidden_states(
        model, input_ids=torch.cat([r["input_ids"] for r in records], dim=1),
        position_ids=packed_mrope_position_ids(samples, spec).to(device),
        **{k: v for k, v in media.items() if v is not None},
        **patcher.attention_kwargs({"cu_seqlens": cu_seqlens, "max_seqlen": max(lengths)}),
    )[0]
    loss = sum(_sum_loss(model, h, _labels(r)[0]) for h, r in zip(hidden.split(lengths), records))
    count = sum(int((_labels(r)[0, 1:] != -100).sum()) for r in records)
    (loss / count).backward()
    return (loss / count).item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _np(record, key):
    return record[key].cpu().numpy() if key in record else None


def test_packed_equals_stock_padded_forward_with_images_and_video(bundle, encoded):
    stock = copy.deepcopy(bundle.model)
    ours = copy.deepcopy(bundle.model)
    padded = _padded_loss_and_grads(stock, encoded)
    packed = _packed_loss_and_grads(bundle, ours, encoded)
    assert packed[0] == pytest.approx(padded[0], abs=1e-5)
    # DeepStack mergers and the vision blocks are trained through this path (non-zero gradients)
    assert padded[1]["model.visual.deepstack_merger_list.1.linear_fc2.weight"].abs().sum() > 0
    assert set(packed[1]) == set(padded[1])
    for name, grad in packed[1].items():
        torch.testing.assert_close(grad, padded[1][name], atol=1e-4, rtol=1e-3, msg=name)


def test_deepstack_changes_the_output(bundle, encoded):
    """Without the DeepStack residuals the decoder output differs: they really reach the decoder."""
    from lmms_engine.models.encoders import family_hidden_states

    model = copy.deepcopy(bundle.model)
    record = encoded[0]
    spec = bundle.data_extras["mrope_spec"]
    positions = torch.from_numpy(mrope_position_ids(MropeSample(record["input_ids"][0].numpy(), _np(record, "image_grid_thw")), spec)[0]).unsqueeze(1)
    inputs = dict(input_ids=record["input_ids"], position_ids=positions, pixel_values=record["pixel_values"],
                  image_grid_thw=record["image_grid_thw"])
    with torch.no_grad():
        full = family_hidden_states(model, "model.language_model", bundle.encoders, **inputs)
        for merger in model.model.visual.deepstack_merger_list:
            merger.linear_fc2.weight.zero_()
            merger.linear_fc2.bias.zero_()
        plain = family_hidden_states(model, "model.language_model", bundle.encoders, **inputs)
    assert not torch.allclose(full, plain)


def test_padded_vision_mlps_give_the_same_outputs_and_gradients(bundle, encoded):
    """Qwen3-VL-8B's 4304-wide vision MLP runs padded to 4352 on CUDA (kernels/encoder_mlp.py): its
    fc1 / fc2 padded on the fly give the same merged and DeepStack features and gradients, and only
    the real weights exist (the tiny tower's 256 is aligned, so pad to 96 to exercise it)."""
    from lmms_engine.models.qwen3_vl.kernels import pad_encoder_mlps

    visual = copy.deepcopy(bundle.model.model.visual).float()
    record = encoded[0]

    def run():
        visual.zero_grad()
        out = visual(record["pixel_values"].float(), grid_thw=record["image_grid_thw"])
        features = [out.pooler_output, *out.deepstack_features]
        sum(f.square().sum() for f in features).backward()
        return [f.detach() for f in features], [p.grad.clone() for p in visual.parameters()]

    expected, expected_grads = run()
    assert pad_encoder_mlps(visual, align=96) == len(visual.blocks)  # 256 -> 288
    assert visual.blocks[0].mlp.lmms_pad == 32
    got, grads = run()
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert [p.shape for p in visual.blocks[0].mlp.parameters()] == [(256, 128), (256,), (128, 256), (128,)]
    assert pad_encoder_mlps(copy.deepcopy(bundle.model.model.visual)) == 0  # aligned at 128: untouched


def test_acvision_setup_gives_the_same_loss_and_gradients(bundle, encoded):
    """bench_vl's `liger_rmpad_varlen_acvision(_accum4)` set-up for Qwen3-VL, on CPU (Liger and the
    varlen kernel are CUDA's): only the vision blocks checkpointed, their MLPs padded; the packed
    loss and gradients are the plain packed path's."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    from lmms_engine.models.qwen3_vl.kernels import pad_encoder_mlps
    from lmms_engine.parallel.common import apply_checkpointing_and_compile

    records = encoded[2:]  # the video record: the cheapest with every vision path
    expected_loss, expected = _packed_loss_and_grads(bundle, copy.deepcopy(bundle.model), records)
    model = copy.deepcopy(bundle.model)
    apply_checkpointing_and_compile(model, bundle.shard_units, 0, False, bundle.encoder_units, True)
    wrapped = [m._checkpoint_wrapped_module for m in model.modules() if isinstance(m, CheckpointWrapper)]
    assert len(wrapped) == len(model.model.visual.blocks) and all(isinstance(m, bundle.encoder_units) for m in wrapped)
    assert pad_encoder_mlps(model.model.visual, align=96) == len(wrapped)
    loss, grads = _packed_loss_and_grads(bundle, model, records)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    grads = {name.replace("._checkpoint_wrapped_module", ""): grad for name, grad in grads.items()}
    assert grads.keys() == expected.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("index", [1, 2])
def test_positions_equal_transformers_get_rope_index(bundle, encoded, index):
    """Video with per-frame timestamps (and a video-then-image record): our ids == transformers'."""
    record = encoded[index]
    ours, _ = mrope_position_ids(MropeSample(record["input_ids"][0].numpy(), _np(record, "image_grid_thw"),
                                             _np(record, "video_grid_thw")), bundle.data_extras["mrope_spec"])
    theirs, _ = bundle.model.model.get_rope_index(
        record["input_ids"], record["mm_token_type_ids"], image_grid_thw=record.get("image_grid_thw"),
        video_grid_thw=record.get("video_grid_thw"))
    np.testing.assert_array_equal(ours, theirs[:, 0].numpy())
    text = bundle.processor.tokenizer.decode(record["input_ids"][0])
    # 2 fps, frames merged in pairs: each temporal patch stamped with its two frames' mean time
    assert "<0.2 seconds>" in text and "<1.2 seconds>" in text


def test_multi_image_positions_equal_transformers(bundle):
    record = _encode(bundle.processor, ["image", "and", "image"], [_image(5), _image(6, (70, 40))])
    ours, _ = mrope_position_ids(MropeSample(record["input_ids"][0].numpy(), _np(record, "image_grid_thw")),
                                 bundle.data_extras["mrope_spec"])
    theirs, _ = bundle.model.model.get_rope_index(record["input_ids"], record["mm_token_type_ids"],
                                                  image_grid_thw=record["image_grid_thw"])
    np.testing.assert_array_equal(ours, theirs[:, 0].numpy())


def test_placeholder_mismatch_is_named(bundle, encoded):
    record = encoded[0]
    ids = record["input_ids"].clone()
    ids[ids == bundle.model.config.image_token_id] = 0  # the placeholders are gone, the pixels not
    spec = bundle.data_extras["mrope_spec"]
    with pytest.raises(ValueError, match="image grids given"):
        mrope_position_ids(MropeSample(ids[0].numpy(), _np(record, "image_grid_thw")), spec)
    with pytest.raises(ValueError, match="0 image placeholder tokens but the vision tower made"):
        bundle.hidden_states(copy.deepcopy(bundle.model), input_ids=ids, position_ids=None,
                             pixel_values=record["pixel_values"], image_grid_thw=record["image_grid_thw"])


def test_text_only_micro_batch_runs_the_tower_times_zero(bundle):
    model = copy.deepcopy(bundle.model)
    ids = torch.tensor([[1, 2, 3, 4]])
    hidden = bundle.hidden_states(model, input_ids=ids, position_ids=torch.arange(4)[None])
    hidden.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "deepstack_merger_list" in n]
    assert all(g is not None and not g.any() for g in grads)


def test_vision_flops_count_blocks_and_all_mergers(bundle):
    from lmms_engine.models.qwen3_vl.flops import qwen3_vision_forward_flops

    config = bundle.model.config.vision_config
    grid = (2, 4, 6)
    patches = 48
    d, inter, merged = config.hidden_size, config.intermediate_size, config.hidden_size * 4
    expected = (2 * patches * 3 * 2 * 16 * 16 * d
                + config.depth * (2 * patches * (4 * d * d + 2 * d * inter) + 4 * d * 2 * 24**2)
                + 3 * 2 * (patches // 4) * (merged * merged + merged * config.out_hidden_size))
    assert qwen3_vision_forward_flops(config, grid) == expected
    batch = {"image_grid_thw": torch.tensor([grid]), "doc_lengths": [10]}
    assert bundle.encoders[0].flops(bundle.model, batch, True) == 3 * expected
    assert bundle.step_flops(batch) > 3 * expected


def test_components_cover_deepstack_mergers(bundle):
    components = bundle.components()
    assert components["deepstack_merger"] == ("model.visual.deepstack_merger_list.",)
    assert components["merger"] == ("model.visual.merger.",)


def test_builder_errors_are_named():
    with pytest.raises(ValueError, match="model 'x': set model.pretrained"):
        build_qwen3_vl(name="x")
    with pytest.raises(ValueError, match="config.image_token_id=5 but the tokenizer's <|image_pad|>"):
        build_qwen3_vl(name="x", config={"image_token_id": 5, "text_config": {"vocab_size": 272}}, structure_only=True)


def test_liger_registry_patches_decoder_and_qk_norms(bundle, monkeypatch):
    pytest.importorskip("liger_kernel")
    from transformers.models.qwen3_vl import modeling_qwen3_vl

    from lmms_engine.kernels.liger import apply_liger

    monkeypatch.setattr(modeling_qwen3_vl, "apply_rotary_pos_emb", modeling_qwen3_vl.apply_rotary_pos_emb)
    model = copy.deepcopy(bundle.model)
    (summary,) = apply_liger(model)
    layers = len(model.model.language_model.layers)
    assert f"qwen3_vl (lmms_engine registry): {4 * layers + 1} RMSNorm" in summary
    assert "forward" in vars(model.model.language_model.layers[0].self_attn.q_norm)
    assert modeling_qwen3_vl.apply_rotary_pos_emb.__name__ == "liger_rotary_pos_emb"


@pytest.mark.parametrize("preset,low,high", [("qwen3_vl_2b", 2.0e9, 2.25e9), ("qwen3_vl_4b", 4.3e9, 4.5e9),
                                             ("qwen3_vl_8b", 8.6e9, 8.9e9)])
def test_real_presets_have_published_sizes(preset, low, high):
    """Built on the meta device (no memory, no init): parameter counts as Qwen publishes them."""
    with torch.device("meta"):
        bundle = _preset(preset)(structure_only=True)
    n_params = sum(p.numel() for p in bundle.model.parameters())
    assert low < n_params < high, n_params
    assert bundle.model.config.vision_config.patch_size == 16
