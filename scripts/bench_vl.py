"""Vision-language training throughput on one GPU (Qwen2.5-VL, Qwen3-VL): an HF-style padded baseline
against the framework's configurations, on the same image-text samples with the same token budget, in
one process.

    python scripts/bench_vl.py --tokens-per-step 16384 --out docs/perf/bench_vl_3b.json
    python scripts/bench_vl.py --model PRESET --tokens-per-step 16384 --out docs/perf/bench_PRESET.json

--model: any vision-language preset under conf/model/ (default: the bench preset of the first
registered vision-language family, Qwen2.5-VL-3B). The family is the preset's `_target_`'s, asked of
the registry (models/registry.py): its builder, its encoders' FLOPs (Qwen3-VL's count the DeepStack
mergers), its token ids and positions; images are resized with the tower's factor (patch x merge:
28, or 32 for Qwen3-VL) under the same pixel cap.

The model is the preset's shape, randomly initialised, with the built-in processor's special tokens.
Samples are synthetic but shaped like image SFT data (seeded, documented in docs/performance.md):
  - images: original sizes drawn from a mix of photo / screenshot / document / thumbnail sizes, resized
    as the processor does (smart_resize, factor 28 / 32 for Qwen3-VL, max_pixels 1280*28*28 = 1.0 MP):
      640x480 (35%), 1024x768 (15%), 1280x720 (20%), 1024x1024 (10%), 1920x1080 (10%), 336x336 (10%);
  - samples: 80% one image, 10% two images, 10% text only; a prompt (log-normal, median 60 tokens)
    around the images and an answer (median 150 tokens; text-only samples median 600), answer trained.
Pixels are random (the tower's cost does not depend on them); mrope positions are computed per sample.
The vision tower's FLOPs count in MFU (its encoder's `flops`): it runs ~4 patches per visual token.
The baseline is what a plain Hugging Face loop does: fp32 weights with bf16 autocast, padded
micro-batches, sdpa in the decoder AND the vision tower (transformers' per-image loop), no Liger.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import sys
import traceback
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    default_preset,
    environment,
    load_preset,
    markdown_table,
    stock_attention,
    throughput,
    timed_steps,
    with_ratios,
)
from bench_train import config_for, make_strategy  # noqa: E402

from lmms_engine.data.batch import Batch  # noqa: E402
from lmms_engine.data.collate import (  # noqa: E402
    collate_packed,
    collate_padded,
    mrope_position_ids_packed,
    mrope_position_ids_padded,
)
from lmms_engine.data.packing import pack_best_fit_decreasing  # noqa: E402
from lmms_engine.data.types import MediaItem, Sample  # noqa: E402
from lmms_engine.kernels.patcher import KernelPatcher  # noqa: E402
from lmms_engine.models.family import VISION  # noqa: E402
from lmms_engine.models.flops import peak_flops  # noqa: E402
from lmms_engine.models.mrope import MropeSpec  # noqa: E402
from lmms_engine.train.loop import StepContext, train_step  # noqa: E402
from lmms_engine.train.module import CausalLMWithLoss  # noqa: E402
from lmms_engine.train.optim import build_adamw  # noqa: E402
from lmms_engine.config import LoraSettings  # noqa: E402
from lmms_engine.train.lora import adapter_params, apply_lora, lora_step_flops  # noqa: E402
from lmms_engine.train.prefetch import make_collator  # noqa: E402

IMAGE_SIZES = [((480, 640), 0.35), ((768, 1024), 0.15), ((720, 1280), 0.20), ((1024, 1024), 0.10),
               ((1080, 1920), 0.10), ((336, 336), 0.10)]
MAX_PIXELS = 1280 * 28 * 28
VL_CONFIGS = ("hf_padded_sdpa", "rmpad_varlen", "liger_rmpad_varlen", "liger_rmpad_varlen_ac2")


def image_grid(rng: np.random.Generator, patch: int = 14, merge: int = 2) -> tuple[int, int, int]:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    sizes, weights = zip(*IMAGE_SIZES)
    height, width = sizes[rng.choice(len(sizes), p=weights)]
    factor = patch * merge
    h, w = smart_resize(height, width, factor=factor, min_pixels=4 * factor**2, max_pixels=MAX_PIXELS)
    return 1, h // patch, w // patch


def make_vl_samples(n: int, seed: int, vocab: int, spec: MropeSpec, specials: dict[str, int],
                    patch: int = 14) -> list[Sample]:
    """Synthetic samples whose `media` are images of the documented mix (grids only: no files)."""
    rng = np.random.default_rng(seed)
    text_low = max(specials.values()) + 1  # random text ids never collide with a special token
    samples = []
    for i in range(n):
        kind = rng.choice(3, p=[0.8, 0.1, 0.1])  # one image, two images, text only
        grids = [image_grid(rng, patch, spec.spatial_merge_size) for _ in range((1, 2, 0)[kind])]
        prompt = int(np.clip(rng.lognormal(np.log(60), 0.8), 8, 1024))
        answer = int(np.clip(rng.lognormal(np.log(600 if kind == 2 else 150), 0.9), 8, 6000))
        ids = [rng.integers(text_low, vocab, size=prompt // 2)]
        for t, h, w in grids:
            visual = t * h * w // spec.spatial_merge_size**2
            ids.append(np.array([specials["start"], *[spec.image_token_id] * visual, specials["end"]]))
        ids.append(rng.integers(text_low, vocab, size=prompt - prompt // 2 + answer))
        input_ids = np.concatenate(ids).astype(np.int32)
        labels = np.full_like(input_ids, -100)
        labels[-answer:] = input_ids[-answer:]
        media = tuple(MediaItem("image", "synthetic", grid) for grid in grids)
        samples.append(Sample(input_ids, labels, f"synthetic_vl:{i}", media))
    return samples


class VLStepData:
    """collate() for train_step: the data pipeline's packed / padded collation and per-sample mrope
    positions, with random pixels in place of decoded images."""

    def __init__(self, samples: list[Sample], packing: bool, pad_token_id: int, spec: MropeSpec, patch_dim: int):
        self.samples, self.packing, self.pad_token_id, self.spec, self.patch_dim = samples, packing, pad_token_id, spec, patch_dim

    def collate(self, indices: list[int]) -> Batch:
        chosen = [self.samples[i] for i in indices]
        if self.packing:
            batch = collate_packed(chosen).with_fields(position_ids=mrope_position_ids_packed(chosen, self.spec))
        else:
            batch = collate_padded(chosen, self.pad_token_id).with_fields(
                position_ids=mrope_position_ids_padded(chosen, self.spec))
        grids = np.array([m.grid_thw for s in chosen for m in s.media], dtype=np.int64).reshape(-1, 3)
        if len(grids):
            batch = batch.with_fields(image_grid_thw=torch.from_numpy(grids),
                                      pixel_values=torch.randn(int(grids.prod(axis=1).sum()), self.patch_dim))
        return batch


def make_packs(samples: list[Sample], tokens_per_step: int, n_packs: int) -> list[list[int]]:
    packs = pack_best_fit_decreasing(np.array([len(s) for s in samples]), tokens_per_step)
    full = sorted(packs, key=lambda p: -sum(len(samples[i]) for i in p))[:n_packs]
    if len(full) < n_packs:
        raise ValueError(f"only {len(full)} packs; generate more samples")
    return full


def step_micro_batches(packs: list[list[int]], cfg, micro_batch: int) -> list[list[list[int]]]:
    """Each step's micro-batches: grad_accum packs, or (padded baseline) their samples shuffled
    into micro-batches of `micro_batch`."""
    steps = []
    for i in range(len(packs) // cfg.grad_accum):
        step_packs = packs[i * cfg.grad_accum : (i + 1) * cfg.grad_accum]
        if cfg.packing:
            steps.append(step_packs)
        else:
            order = np.random.default_rng(i).permutation(sum(step_packs, [])).tolist()
            steps.append([order[j : j + micro_batch] for j in range(0, len(order), micro_batch)])
    return steps


def profile_steps(ctx, steps, data, args) -> None:
    """Two more steps under torch.profiler (collating in the step), top kernels to --profile-out."""
    from torch.profiler import ProfilerActivity, profile

    ctx = dataclasses.replace(ctx, collate=data.collate)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for batches in steps:
            train_step(ctx, batches)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
    Path(args.profile_out).write_text(table)
    print(table[:5000])


def run_config(name: str, model_cfg, family, samples: list[Sample], packs: list[list[int]], args) -> dict:
    cfg = config_for(name)
    torch.manual_seed(0)
    strategy = make_strategy(cfg, "single")
    strategy.setup()
    with strategy.model_init_context(), torch.device("cuda"):
        bundle = family.build(name=args.model, config=OmegaConf.to_container(model_cfg.config))
    patcher = KernelPatcher(use_rmpad=cfg.packing, attn_backend=cfg.attn_backend, use_liger_kernel=cfg.liger,
                            pad_encoder_mlps=cfg.pad_encoder_mlps, fp8=cfg.fp8)
    if cfg.hf_style:  # transformers' defaults: sdpa in the decoder and the vision tower
        stock_attention(bundle)
    else:
        patcher.apply(bundle.model, strategy.device, padding_free=cfg.packing, encoders=bundle.encoders,
                      decoder_path=bundle.decoder_path, compiled=cfg.compile)
    flops_fn = bundle.step_flops
    if args.lora_rank:  # adapters on the decoder projections (every config, the baseline too), all else frozen
        # The frozen base stored in bf16 (no fp32 copy), as the framework does; adapters fp32.
        apply_lora(bundle.model, LoraSettings(rank=args.lora_rank, alpha=2.0 * args.lora_rank), bundle.components(),
                   frozen_dtype=strategy.frozen_dtype())
        flops_fn = lora_step_flops(bundle.step_flops, bundle.model.config.get_text_config(),
                                   adapter_params(bundle.decoder()))
    module = strategy.prepare(CausalLMWithLoss(bundle.model, patcher.loss_fn(), bundle.hidden_states), bundle.shard_units,
                              bundle.encoder_units)
    optimizer = strategy.build_optimizer(module, lambda m: build_adamw(m, lr=1e-5, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8))
    vision = bundle.model.config.vision_config
    data = VLStepData(samples, cfg.packing, bundle.tokenizer.pad_token_id, bundle.data_extras["mrope_spec"],
                      vision.in_channels * vision.temporal_patch_size * vision.patch_size**2)
    steps = step_micro_batches(packs, cfg, args.baseline_micro_batch)
    collator = make_collator(data.collate, [mb for step in steps for mb in step], args.data_workers, strategy.device)
    ctx = StepContext(
        module=module, optimizer=optimizer, strategy=strategy, collate=collator.get,
        attention_kwargs=patcher.attention_kwargs, flops_fn=flops_fn, max_grad_norm=1.0,
        input_keys=bundle.input_keys,
    )
    measured = timed_steps(ctx, steps, math.ceil(args.warmup / cfg.grad_accum), strategy.device)
    collator.close()
    if args.profile == name:
        profile_steps(ctx, steps[:2], data, args)
    first_block = bundle.encoders[0].module(bundle.model).blocks[0]
    result = {
        "config": name, **cfg.__dict__, "world_size": 1, "lora_rank": args.lora_rank,
        **throughput(measured, 1, peak_flops(torch.cuda.get_device_name())), "attn_backend_resolved": patcher.backend,
        "vision_attention": getattr(first_block.attn, "lmms_varlen_backend", "sdpa"),
    }
    del first_block
    del ctx, module, optimizer, bundle
    gc.collect()
    torch.cuda.empty_cache()
    return result


def vision_ids(family, model_cfg) -> tuple[MropeSpec, dict[str, int]]:
    """The preset's mrope spec and vision special-token ids (all below the random text ids), from its
    module tree on the meta device (no weights) with the built-in processor's tokenizer."""
    with torch.device("meta"):
        bundle = family.build(name="ids", config=OmegaConf.to_container(model_cfg.config), structure_only=True)
    config = bundle.model.config
    specials = {"start": config.vision_start_token_id, "end": config.vision_end_token_id,
                "video": config.video_token_id, "image": config.image_token_id}
    return bundle.data_extras["mrope_spec"], specials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a vision-language preset under conf/model/ (default: the first "
                        "registered vision-language family's bench preset)")
    parser.add_argument("--tokens-per-step", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--baseline-micro-batch", type=int, default=4)
    parser.add_argument("--configs", default=",".join(VL_CONFIGS), help="comma-separated; the first is the baseline")
    parser.add_argument("--data-workers", type=int, default=6, help="processes collating ahead (0 = in the step)")
    parser.add_argument("--profile", default=None, help="a config to profile for 2 extra steps")
    parser.add_argument("--profile-out", default="profile_vl.txt")
    parser.add_argument("--out", default=None, help="JSON output path")
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA adapters of this rank on the decoder "
                        "projections in every config (0: full fine-tuning); MFU then counts frozen weights as 4N")
    args = parser.parse_args()
    args.model = args.model or default_preset(VISION)
    model_cfg, family = load_preset(args.model, VISION)
    spec, specials = vision_ids(family, model_cfg)
    vision = model_cfg.config.vision_config
    samples = make_vl_samples(args.steps * args.tokens_per_step // 300, 0, model_cfg.config.text_config.vocab_size, spec,
                              specials, vision.patch_size)
    packs = make_packs(samples, args.tokens_per_step, args.steps)
    results = []
    for name in args.configs.split(","):
        try:
            results.append(run_config(name, model_cfg, family, samples, packs, args))
        except Exception as err:  # one failing configuration must not hide the others' figures
            traceback.print_exc()
            results.append({"config": name, "error": f"{type(err).__name__}: {str(err)[:300]}"})
            gc.collect()
            torch.cuda.empty_cache()
        print(json.dumps(results[-1]), flush=True)
    report = {"model": args.model, "tokens_per_step": args.tokens_per_step, "steps": args.steps, "warmup": args.warmup,
              "image_sizes": IMAGE_SIZES, "max_pixels": MAX_PIXELS, **environment(), "results": with_ratios(results)}
    print(markdown_table(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
