"""Training pieces of Qwen2.5-VL: one vision-tower call per micro-batch (dummy when there is no
media), encoder attention, component freezing and learning rates, FLOPs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("torchvision", reason="Qwen2.5-VL processors need torchvision")
Image = pytest.importorskip("PIL.Image", reason="images are PIL images")

from lmms_engine.kernels.loss import cross_entropy_sum
from lmms_engine.kernels.patcher import KernelPatcher
from lmms_engine.models.base import ModelBundle
from lmms_engine.models.flops import train_flops
from lmms_engine.models.mrope import MropeSample, MropeSpec, mrope_position_ids
from lmms_engine.models.qwen2_5_vl import build_qwen2_5_vl
from lmms_engine.models.qwen2_5_vl.flops import vision_train_flops
from lmms_engine.train.module import CausalLMWithLoss
from lmms_engine.train.optim import build_adamw, component_of, freeze_components

PRESETS = Path(__file__).resolve().parents[2] / "conf" / "model"


def _bundle() -> ModelBundle:
    values = yaml.safe_load((PRESETS / "tiny_qwen2_5_vl.yaml").read_text())
    values.pop("_target_")
    torch.manual_seed(0)
    return build_qwen2_5_vl(**values)


@pytest.fixture
def bundle() -> ModelBundle:
    return _bundle()


def _inputs(bundle: ModelBundle, with_image: bool) -> dict:
    parts = [{"type": "image_url", "image_url": "x.png"}] if with_image else []
    messages = [
        {"role": "user", "content": [*parts, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A square."},
    ]
    text = bundle.tokenizer.apply_chat_template(messages, tokenize=False)
    images = [Image.fromarray(np.full((56, 84, 3), 200, dtype=np.uint8))] if with_image else None
    encoded = bundle.processor(text=[text], images=images, return_tensors="pt")
    sample = MropeSample(input_ids=encoded["input_ids"][0], image_grid_thw=encoded.get("image_grid_thw"))
    positions, _ = mrope_position_ids(sample, MropeSpec.from_config(bundle.model.config))
    inputs = {"input_ids": encoded["input_ids"], "position_ids": torch.from_numpy(positions).unsqueeze(1)}
    if with_image:
        inputs.update(pixel_values=encoded["pixel_values"], image_grid_thw=encoded["image_grid_thw"])
    return inputs


def _count_tower_calls(bundle: ModelBundle) -> list[int]:
    calls = []
    bundle.model.model.visual.register_forward_hook(lambda module, args, out: calls.append(1))
    return calls


def test_text_only_micro_batch_runs_the_tower_once_and_changes_nothing(bundle):
    """A rank without images still runs the (sharded) vision blocks, so FSDP2 / ZeRO-3 gathers
    match across ranks; the dummy features enter with weight zero."""
    module = CausalLMWithLoss(bundle.model, cross_entropy_sum, bundle.hidden_states)
    inputs = _inputs(bundle, with_image=False)
    labels = torch.roll(inputs["input_ids"], -1)
    calls = _count_tower_calls(bundle)
    loss = module(labels=labels, **inputs)
    assert len(calls) == 1
    text_only = bundle.model.model.language_model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"])
    expected = cross_entropy_sum(text_only.last_hidden_state, bundle.model.lm_head.weight, labels)
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    loss.backward()
    vision_grads = [p.grad for p in bundle.model.model.visual.parameters()]
    assert all(g is not None for g in vision_grads)  # every rank reduces the same gradients
    assert all(float(g.abs().max()) == 0.0 for g in vision_grads)


def test_images_and_videos_share_one_tower_call(bundle):
    inputs = _inputs(bundle, with_image=True)
    image_tokens = int((inputs["input_ids"] == bundle.model.config.image_token_id).sum())
    # The same pixels as a one-frame-pair "video": its placeholders follow the image's.
    video_ids = torch.full((1, image_tokens), bundle.model.config.video_token_id)
    grid = inputs["image_grid_thw"]
    both = {
        "input_ids": torch.cat([inputs["input_ids"], video_ids], dim=1),
        "position_ids": torch.arange(inputs["input_ids"].shape[1] + image_tokens).view(1, 1, -1).expand(3, 1, -1),
        "pixel_values": inputs["pixel_values"], "image_grid_thw": grid,
        "pixel_values_videos": inputs["pixel_values"], "video_grid_thw": grid,
    }
    calls = _count_tower_calls(bundle)
    hidden = bundle.hidden_states(bundle.model, **both)
    assert len(calls) == 1
    assert hidden.shape == (1, both["input_ids"].shape[1], bundle.model.config.text_config.hidden_size)


def test_patcher_keeps_packed_causal_attention_out_of_the_vision_tower(bundle):
    KernelPatcher(use_rmpad=True, attn_backend="sdpa").apply(bundle.model, torch.device("cpu"), padding_free=True,
                                                        encoders=bundle.encoders, decoder_path=bundle.decoder_path)
    assert bundle.model.model.language_model.config._attn_implementation == "lmms_sdpa"
    assert bundle.model.model.visual.config._attn_implementation == "sdpa"


def test_components_are_matched_longest_prefix_first_through_wrappers(bundle):
    components = bundle.components()
    assert component_of("lm.model.visual.blocks.0.attn.qkv.weight", components) == "vision"
    assert component_of("module.lm.model.visual.merger.mlp.0.weight", components) == "merger"
    assert component_of("lm.model.language_model.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight",
                        components) == "lm"
    assert component_of("lm.lm_head.weight", components) == "lm"


def test_component_learning_rates_and_freezing(bundle):
    components = bundle.components()
    freeze_components(bundle.model, ["vision"], components)
    module = CausalLMWithLoss(bundle.model, cross_entropy_sum, bundle.hidden_states)
    optimizer = build_adamw(module, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8,
                            components=components, component_lr={"merger": 1e-5})
    by_component = {}
    for group in optimizer.param_groups:
        by_component.setdefault(group["component"], set()).add(group["lr_scale"])
    assert set(by_component) == {"lm", "merger"}  # the frozen tower is not in the optimizer
    assert [round(scale, 9) for scale in by_component["merger"]] == [0.1]
    assert by_component["lm"] == {1.0}
    merger = {id(p) for p in bundle.model.model.visual.merger.parameters()}
    in_merger_groups = {id(p) for g in optimizer.param_groups if g["component"] == "merger" for p in g["params"]}
    assert in_merger_groups == merger
    blocks = list(bundle.model.model.visual.blocks.parameters())
    assert not any(p.requires_grad for p in blocks)


@pytest.mark.parametrize("names, key", [(["tower"], "optim.freeze"), (["audio"], "optim.freeze")])
def test_unknown_components_are_rejected(bundle, names, key):
    with pytest.raises(ValueError, match=rf"{key}: unknown component\(s\) .*this model has lm, vision, merger"):
        freeze_components(bundle.model, names, bundle.components())


def test_freezing_everything_is_rejected(bundle):
    with pytest.raises(ValueError, match="freezes every parameter"):
        freeze_components(bundle.model, ["lm", "vision", "merger"], bundle.components())


def test_step_flops_add_the_vision_tower(bundle):
    config = bundle.model.config
    grids = torch.tensor([[1, 4, 6], [2, 8, 8]])
    batch = {"doc_lengths": [30, 50], "image_grid_thw": grids}
    text = train_flops(config.text_config, [30, 50])
    assert bundle.step_flops(batch) == pytest.approx(text + vision_train_flops(config.vision_config, grids.tolist()))
    freeze_components(bundle.model, ["vision"], bundle.components())
    frozen = text + vision_train_flops(config.vision_config, grids.tolist(), trainable=False)
    assert bundle.step_flops(batch) == pytest.approx(frozen)
    assert bundle.step_flops({"doc_lengths": [30, 50]}) == pytest.approx(text)


def test_packed_and_padded_vl_batches_give_the_same_loss(bundle, tmp_path):
    """The demo's image / video / text samples, one pack: packed (sdpa per document, mrope ids
    restarting per sample) vs the same samples padded (attention mask): fp32, 1e-5."""
    from lmms_engine.data.dataset import build_sft_dataset
    from lmms_engine.data.settings import DataSettings
    from lmms_engine.kernels.attention import varlen_kwargs
    from lmms_engine.train.resolvers import demo_data

    datasets = {
        packing: build_sft_dataset(bundle.tokenizer, DataSettings(demo_data("demo_vl.yaml"), packing=packing, packing_length=1024,
                                                              cache_dir=tmp_path, num_proc=1), **bundle.data_inputs())
        for packing in (True, False)
    }
    pack = next(p for p in datasets[True].micro_batches(0) if datasets[True].collate(p).pixel_values_videos is not None)
    losses = {}
    for packing, dataset in datasets.items():
        KernelPatcher(use_rmpad=packing).apply(bundle.model, torch.device("cpu"), padding_free=packing,
                                                  encoders=bundle.encoders, decoder_path=bundle.decoder_path)
        module = CausalLMWithLoss(bundle.model, cross_entropy_sum, bundle.hidden_states)
        batch = dataset.collate(pack)
        inputs = batch.model_inputs(bundle.input_keys)
        if packing:
            inputs.update(varlen_kwargs(batch.cu_seqlens, batch.max_seqlen, "sdpa"))
        with torch.no_grad():
            losses[packing] = module(labels=batch.labels, **inputs) / batch.num_label_tokens
    assert batch.image_grid_thw is not None and batch.video_grid_thw is not None
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-5, atol=1e-5)


def test_varlen_vision_attention_matches_transformers_per_window_attention(bundle):
    """The instance-level vision attention (one varlen call over all images and windows; here its
    sdpa reference, as CPUs have no varlen kernel) gives transformers' own tower output."""
    from lmms_engine.models.qwen2_5_vl.kernels import patch_vision_attention

    inputs = _inputs(bundle, with_image=True)
    pixels = torch.cat([inputs["pixel_values"], inputs["pixel_values"].flip(0)])
    grids = torch.cat([inputs["image_grid_thw"], inputs["image_grid_thw"]])
    visual = bundle.model.model.visual
    with torch.no_grad():
        expected = visual(pixels, grid_thw=grids).pooler_output
        assert patch_vision_attention(visual, "sdpa") == len(visual.blocks)
        got = visual(pixels, grid_thw=grids).pooler_output
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_prefetched_batches_equal_direct_collation_and_follow_the_plan(bundle, tmp_path):
    """Two worker processes collate the demo's VL micro-batches ahead, in the loop's order."""
    from lmms_engine.data.dataset import build_sft_dataset
    from lmms_engine.data.settings import DataSettings
    from lmms_engine.train.data_iter import StepBatches
    from lmms_engine.train.prefetch import PrefetchCollator
    from lmms_engine.train.resolvers import demo_data

    dataset = build_sft_dataset(bundle.tokenizer, DataSettings(demo_data("demo_vl.yaml"), packing_length=1024, cache_dir=tmp_path,
                                                           num_proc=1), **bundle.data_inputs())
    steps = StepBatches(dataset, grad_accum=2, rank=0, world_size=1)
    collator = PrefetchCollator(dataset.collate, steps.plan(), num_workers=2)
    for _ in range(3):
        for indices in steps.next_step():
            got, expected = collator.get(indices), dataset.collate(indices)
            assert got.fields().keys() == expected.fields().keys()
            for key, value in expected.fields().items():
                if isinstance(value, torch.Tensor):
                    torch.testing.assert_close(getattr(got, key), value, rtol=0, atol=0)
                else:
                    assert getattr(got, key) == value
    with pytest.raises(RuntimeError, match="prefetch plan and the training loop disagree"):
        collator.get([0])
    collator.close()


@pytest.mark.parametrize("every, encoders, decoder_wrapped, vision_wrapped", [
    (0, True, 0, 2), (1, False, 4, 0), (1, None, 4, 2), (2, None, 2, 2), (0, None, 0, 0)])
def test_encoder_checkpointing_is_chosen_apart_from_the_decoders(bundle, every, encoders, decoder_wrapped, vision_wrapped):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    from lmms_engine.parallel.common import apply_checkpointing_and_compile

    apply_checkpointing_and_compile(bundle.model, bundle.shard_units, every, False, bundle.encoder_units, encoders)
    wrapped = [m for m in bundle.model.modules() if isinstance(m, CheckpointWrapper)]
    vision = [m for m in wrapped if isinstance(m._checkpoint_wrapped_module, bundle.encoder_units)]
    assert (len(wrapped) - len(vision), len(vision)) == (decoder_wrapped, vision_wrapped)


def test_padded_vision_mlps_give_the_same_outputs_and_gradients(bundle):
    """Width 3420-style MLPs padded to a multiple of 128 on the fly: exact, and only real weights
    get gradients (the tiny tower's 256 is aligned, so pad to 96 to exercise it)."""
    from lmms_engine.models.qwen2_5_vl.kernels import pad_encoder_mlps

    visual = bundle.model.model.visual
    inputs = _inputs(bundle, with_image=True)

    def run():
        visual.zero_grad()
        out = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in visual.parameters()]

    expected, expected_grads = run()
    assert pad_encoder_mlps(visual, align=96) == len(visual.blocks)  # 256 -> 288
    assert visual.blocks[0].mlp.lmms_pad == 32
    got, grads = run()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert [p.shape for p in visual.blocks[0].mlp.parameters()] == [(256, 128), (256,), (256, 128), (256,), (128, 256), (128,)]
