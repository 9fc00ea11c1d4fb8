"""Audio-language training throughput (Qwen2-Audio): an HF-style padded baseline against the
framework's configurations, on the same audio-chat samples with the same token budget, in one run.

    torchrun --standalone --nproc_per_node=2 scripts/bench_audio.py --out docs/perf/bench_audio_7b_h200x2.json
    python scripts/bench_audio.py --tiny --out /tmp/bench_audio_tiny.json    # CPU smoke test, 1-2 min

Why two GPUs for the 7B shape: Qwen2-Audio-7B has 8.4B parameters, and full fine-tuning with AdamW
keeps 16 bytes per parameter (fp32 weights, gradients and two moments: 134 GB) before any bf16 copy
or activation, more than one 141 GB H200 holds. Under torchrun every configuration runs with FSDP2
over the ranks (`--parallel auto`), each rank training on its own packs of `--tokens-per-step`.

The model is the preset's shape (`--model`; default: the bench preset of the first registered audio
family, Qwen2-Audio-7B, or with `--tiny` its CPU-sized preset), randomly initialised, with the
family's built-in processor (no download); the family is the preset's `_target_`'s, asked of the
registry (models/registry.py).
Samples are synthetic but shaped like audio chat SFT data (seeded, documented in docs/performance.md):
  - clips: durations log-uniform on 2..30 s (median 7.7 s, mean 10.3 s), from short commands through
    speech utterances (LibriSpeech's average ~12 s) to 10-30 s sound-event / music clips; 30 s is the
    encoder's window. A clip of n samples at 16 kHz has L = ceil(n / 160) mel frames and
    P = ((L - 1) // 2 + 1 - 2) // 2 + 1 `<|AUDIO|>` tokens (~25 per second), counted by the data
    pipeline's own functions (data/media_audio.py);
  - conversations (ChatML): the first user turn holds 1 clip (85%) or 2 (15%), each as
    `<|audio_bos|> <|AUDIO|>*P <|audio_eos|>`, and a question (log-normal, median 30 tokens); the
    answer has median 100 tokens; then 0 (70%), 1 (20%) or 2 (10%) text-only follow-up rounds
    (question median 20, answer median 80). Assistant answers and their `<|im_end|>` are trained.
Mel features are random (the cost does not depend on their values). Batches come from the data
pipeline's collate_packed / collate_padded; the framework gets each clip's L + 2 frames (the batch
contract of the family's audio encoder, data/media_audio.py), the baseline the stock processor's
layout: every clip padded to 30 s = 3000 frames, with its feature_attention_mask.

Baseline (`hf_padded_sdpa`): transformers' own model forward (the stock encoder over the
full 30 s of every clip, sdpa in the encoder and the decoder), padded micro-batches of
`--baseline-micro-batch`, no Liger, no packing, logits materialised; fp32 weights + bf16 autocast on
one GPU, and under FSDP2 the framework's bf16 mixed precision (one process per GPU, as accelerate's
FSDP2 plugin runs it). MFU counts useful work only: the decoder on real tokens and the audio
encoder + projector on each clip's real frames (the audio encoder's `flops`), so the baseline's 30 s
padding is not credited. Peak 989 TFLOP/s (H100 / H200 bf16 dense, models/flops.py); on a device
not in that table (CPU) MFU is still taken against that figure and the report says so.

Also measured in the same run: the audio encoder alone, milliseconds per second of audio, stock
(padded to 30 s) against rmpad (real frames only), on `--encoder-clips` clips of the same
distribution (bench_audio_encoder.encoder_costs).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_audio_encoder import build_encoder, encoder_costs  # noqa: E402
from bench_common import (  # noqa: E402
    default_preset,
    device_name,
    environment,
    load_preset,
    markdown_table,
    stock_attention,
    throughput,
    timed_steps,
    with_ratios,
)
from bench_train import config_for, make_strategy  # noqa: E402
from bench_vl import make_packs, profile_steps  # noqa: E402

from lmms_engine.data.batch import Batch  # noqa: E402
from lmms_engine.data.collate import collate_packed, collate_padded  # noqa: E402
from lmms_engine.data.media_audio import AudioSettings, audio_settings, audio_token_count, clip_mel_lengths  # noqa: E402
from lmms_engine.data.types import MediaItem, Sample  # noqa: E402
from lmms_engine.kernels.patcher import KernelPatcher  # noqa: E402
from lmms_engine.models.base import lm_hidden_states  # noqa: E402
from lmms_engine.models.family import AUDIO  # noqa: E402
from lmms_engine.models.flops import PEAK_BF16_FLOPS, peak_flops  # noqa: E402
from lmms_engine.models.registry import default_family  # noqa: E402
from lmms_engine.parallel.single import SingleDevice  # noqa: E402
from lmms_engine.train.loop import StepContext  # noqa: E402
from lmms_engine.train.module import CausalLMWithLoss  # noqa: E402
from lmms_engine.train.optim import build_adamw  # noqa: E402
from lmms_engine.train.prefetch import make_collator  # noqa: E402

# The audio family measured by default, and the placeholder / begin / end tokens of its processor.
AUDIO_FAMILY = default_family(AUDIO)
AUDIO_PAD, AUDIO_BOS, AUDIO_EOS = AUDIO_FAMILY.media.audio.tokens

# The data (see the docstring). Token counts are (median, log-normal sigma, min, max).
CLIP_SECONDS = (2.0, 30.0)  # log-uniform
CLIPS_PER_SAMPLE = {1: 0.85, 2: 0.15}
FOLLOW_UP_ROUNDS = {0: 0.70, 1: 0.20, 2: 0.10}
QUESTION, ANSWER = (30, 0.8, 4, 512), (100, 0.9, 4, 2048)
FOLLOW_UP_QUESTION, FOLLOW_UP_ANSWER = (20, 0.8, 4, 256), (80, 0.9, 4, 1024)
DATA = {"clip_seconds_log_uniform": CLIP_SECONDS, "clips_per_sample": CLIPS_PER_SAMPLE,
        "follow_up_rounds": FOLLOW_UP_ROUNDS, "question_tokens": QUESTION, "answer_tokens": ANSWER,
        "follow_up_question_tokens": FOLLOW_UP_QUESTION, "follow_up_answer_tokens": FOLLOW_UP_ANSWER,
        "token_spec": "(median, lognormal sigma, min, max)"}

# The baseline's model inputs: transformers' own model forward's arguments (the processor's layout).
STOCK_INPUT_KEYS = ("input_ids", "position_ids", "attention_mask", "input_features", "feature_attention_mask")
# MFU's denominator on a device models/flops.py does not list (CPU smoke runs): the H100 / H200 figure.
REFERENCE_PEAK_FLOPS = PEAK_BF16_FLOPS["H200"]
# Checkpointing every layer and block, every 2nd decoder layer, and two packs per optimizer step.
AUDIO_CONFIGS = ("hf_padded_sdpa", "rmpad_varlen", "liger_rmpad_varlen", "liger_rmpad_varlen_ac2",
                 "liger_rmpad_varlen_ac_accum2")
# What runs on a CPU (no Triton for Liger, no varlen flash kernel): the baseline and the packed path.
TINY_CONFIGS = ("hf_padded_sdpa", "packed_sdpa")


# ---------------------------------------------------------------- synthetic samples


def build_builtin_audio_processor(num_mel_bins: int):
    """The default audio family's built-in processor (no download) for an encoder of `num_mel_bins` bins."""
    return AUDIO_FAMILY.builtin_processor({"audio_config": {"num_mel_bins": num_mel_bins}})


@dataclass(frozen=True)
class ChatTokens:
    """The token ids synthetic conversations are made of."""

    im_start: int
    im_end: int
    audio_bos: int
    audio: int
    audio_eos: int
    user: np.ndarray  # "user\n"
    assistant: np.ndarray  # "assistant\n"
    newline: np.ndarray
    text_ids: np.ndarray  # random text draws from these: the vocabulary minus every special / added token

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int) -> ChatTokens:
        def ids(text: str) -> np.ndarray:
            return np.asarray(tokenizer.encode(text, add_special_tokens=False), dtype=np.int64)

        def one(token: str) -> int:
            return int(tokenizer.convert_tokens_to_ids(token))

        reserved = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
        return cls(im_start=one("<|im_start|>"), im_end=one("<|im_end|>"), audio_bos=one(AUDIO_BOS),
                   audio=one(AUDIO_PAD), audio_eos=one(AUDIO_EOS), user=ids("user\n"),
                   assistant=ids("assistant\n"), newline=ids("\n"),
                   text_ids=np.setdiff1d(np.arange(vocab_size), np.fromiter(reserved, dtype=np.int64)))


def _draw(rng: np.random.Generator, choices: dict) -> int:
    values, weights = zip(*choices.items())
    return int(values[rng.choice(len(values), p=weights)])


def _tokens(rng: np.random.Generator, spec: tuple, chat: ChatTokens) -> np.ndarray:
    """Random text of a log-normal length: spec = (median, sigma, min, max) tokens."""
    median, sigma, low, high = spec
    length = int(np.clip(rng.lognormal(np.log(median), sigma), low, high))
    return chat.text_ids[rng.integers(0, len(chat.text_ids), size=length)]


def audio_item(rng: np.random.Generator, name: str, settings: AudioSettings) -> MediaItem:
    """One clip of log-uniform duration (no file: its length is all the model's cost depends on)."""
    seconds = math.exp(rng.uniform(math.log(CLIP_SECONDS[0]), math.log(CLIP_SECONDS[1])))
    return MediaItem("audio", name, audio_samples=round(seconds * settings.sampling_rate),
                     sampling_rate=settings.sampling_rate, chunk_samples=settings.chunk_samples)


def make_audio_samples(n: int, seed: int, chat: ChatTokens, settings: AudioSettings) -> list[Sample]:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        clips = [audio_item(rng, f"synthetic_audio:{i}:{c}", settings) for c in range(_draw(rng, CLIPS_PER_SAMPLE))]
        # Each clip's placeholders as the data pipeline expands them (media_audio.audio_token_count).
        audio = [np.array([chat.audio_bos, *[chat.audio] * audio_token_count(item, settings), chat.audio_eos])
                 for item in clips]
        rounds = [(np.concatenate([*audio, _tokens(rng, QUESTION, chat)]), _tokens(rng, ANSWER, chat))]
        rounds += [(_tokens(rng, FOLLOW_UP_QUESTION, chat), _tokens(rng, FOLLOW_UP_ANSWER, chat))
                   for _ in range(_draw(rng, FOLLOW_UP_ROUNDS))]
        pieces = []  # (ids, trained)
        for question, answer in rounds:
            pieces += [([chat.im_start], False), (chat.user, False), (question, False), ([chat.im_end], False),
                       (chat.newline, False), ([chat.im_start], False), (chat.assistant, False), (answer, True),
                       ([chat.im_end], True), (chat.newline, False)]
        input_ids = np.concatenate([np.asarray(ids, dtype=np.int64) for ids, _ in pieces]).astype(np.int32)
        trained = np.concatenate([np.full(len(ids), flag) for ids, flag in pieces])
        labels = np.where(trained, input_ids, -100).astype(np.int32)
        samples.append(Sample(input_ids, labels, f"synthetic_audio:{i}", tuple(clips)))
    return samples


def data_stats(samples: list[Sample], packs: list[list[int]], settings: AudioSettings) -> dict:
    """What the benchmark's packs hold: samples, clips, seconds of audio and the audio tokens' share."""
    chosen = [samples[i] for pack in packs for i in pack]
    clips = [item for s in chosen for item in s.media]
    tokens = sum(len(s) for s in chosen)
    audio_tokens = sum(audio_token_count(item, settings) for item in clips)
    return {"samples_per_pack": len(chosen) / len(packs), "clips_per_pack": len(clips) / len(packs),
            "audio_seconds_per_pack": sum(item.seconds for item in clips) / len(packs),
            "mean_clip_seconds": float(np.mean([item.seconds for item in clips])),
            "audio_token_share": audio_tokens / tokens, "tokens_per_pack": tokens / len(packs)}


# ---------------------------------------------------------------- batches


@dataclass
class StockAudioBatch(Batch):
    """The stock processor's audio layout (the HF-style baseline's padded batches): every clip in
    the 30 s window, with its frame mask."""

    input_features: torch.Tensor | None = None
    feature_attention_mask: torch.Tensor | None = None


class AudioStepData:
    """collate() for train_step: the data pipeline's packed / padded collation, with random log-mel
    frames in place of decoded audio, in the framework's batch contract (packed: each clip's L + 2
    frames) or the stock processor's layout (padded: every clip in the 30 s window + its frame mask;
    `audio_lengths` rides along for the FLOPs count only)."""

    def __init__(self, samples: list[Sample], packing: bool, pad_token_id: int, settings: AudioSettings):
        self.samples, self.packing, self.pad_token_id, self.settings = samples, packing, pad_token_id, settings

    def collate(self, indices: list[int]) -> Batch:
        chosen = [self.samples[i] for i in indices]
        lengths = [n for s in chosen for item in s.media for n in clip_mel_lengths(item, self.settings)]
        if self.packing:
            batch = collate_packed(chosen)
            return batch.with_fields(**self.packed_audio(lengths)) if lengths else batch
        batch = StockAudioBatch(**vars(collate_padded(chosen, self.pad_token_id)))
        return batch.with_fields(**self.padded_audio(lengths)) if lengths else batch

    def packed_audio(self, lengths: list[int]) -> dict:
        frames = [min(n + self.settings.rules.context_frames, self.settings.max_frames) for n in lengths]
        return {"audio_features": torch.randn(self.settings.n_mels, sum(frames)),
                "audio_frames": torch.tensor(frames, dtype=torch.long),
                "audio_lengths": torch.tensor(lengths, dtype=torch.long)}

    def padded_audio(self, lengths: list[int]) -> dict:
        window = self.settings.max_frames
        mask = torch.arange(window)[None, :] < torch.tensor(lengths)[:, None]
        features = torch.randn(len(lengths), self.settings.n_mels, window) * mask[:, None, :]
        return {"input_features": features, "feature_attention_mask": mask.long(),
                "audio_lengths": torch.tensor(lengths, dtype=torch.long)}


def rank_steps(packs: list[list[int]], cfg, micro_batch: int, rank: int, world: int) -> list[list[list[int]]]:
    """This rank's micro-batches of every step: grad_accum packs per rank, or (padded baseline) the
    samples of its packs, shuffled, in as many micro-batches of at most `micro_batch` as the rank
    with the most samples needs: every rank runs the same number of forward / backward passes
    (FSDP2's collectives must match)."""
    per_step = cfg.grad_accum * world
    steps = []
    for i in range(len(packs) // per_step):
        step_packs = packs[i * per_step : (i + 1) * per_step]
        mine = step_packs[rank::world]
        if cfg.packing:
            steps.append(mine)
            continue
        counts = [sum(len(p) for p in step_packs[r::world]) for r in range(world)]
        chunks = max(math.ceil(c / micro_batch) for c in counts)
        order = np.random.default_rng(i).permutation(sum(mine, [])).tolist()
        if len(order) < chunks:
            raise ValueError(f"step {i}: rank {rank} has {len(order)} samples for {chunks} micro-batches")
        steps.append([part.tolist() for part in np.array_split(np.asarray(order), chunks)])
    return steps


# ---------------------------------------------------------------- one configuration


def bench_strategy(cfg, args):
    if args.device == "cpu":  # fp32, plain module; the baseline differs by its path, not its precision
        return SingleDevice(device="cpu", activation_checkpointing=cfg.activation_checkpointing,
                            encoder_checkpointing=cfg.encoder_checkpointing)
    if cfg.hf_style and args.parallel != "single":
        # HFStyleAutocast is one process without gradient sync: sharded, the baseline takes FSDP2's
        # bf16 mixed precision, keeping its own path (padding, stock encoder, sdpa, no Liger).
        return make_strategy(replace(cfg, hf_style=False), args.parallel)
    return make_strategy(cfg, args.parallel)


def run_config(name: str, model_cfg, family, samples: list[Sample], packs: list[list[int]], settings: AudioSettings,
               peak: float, args) -> dict:
    cfg = config_for(name)
    torch.manual_seed(0)
    strategy = bench_strategy(cfg, args)
    strategy.setup()
    with strategy.model_init_context(), torch.device(strategy.device):
        bundle = family.build(name=args.model, config=OmegaConf.to_container(model_cfg.config))
    patcher = KernelPatcher(use_rmpad=cfg.packing, attn_backend=cfg.attn_backend, use_liger_kernel=cfg.liger,
                            pad_encoder_mlps=cfg.pad_encoder_mlps)
    if cfg.hf_style:  # transformers' defaults: its own forward, sdpa in the decoder and the encoder
        stock_attention(bundle)
        hidden_fn, input_keys = lm_hidden_states, STOCK_INPUT_KEYS
    else:
        patcher.apply(bundle.model, strategy.device, padding_free=cfg.packing, encoders=bundle.encoders,
                      decoder_path=bundle.decoder_path)
        hidden_fn, input_keys = bundle.hidden_states, bundle.input_keys
    module = strategy.prepare(CausalLMWithLoss(bundle.model, patcher.loss_fn(), hidden_fn), bundle.shard_units,
                              bundle.encoder_units)
    optimizer = strategy.build_optimizer(module, lambda m: build_adamw(m, lr=1e-5, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8))
    data = AudioStepData(samples, cfg.packing, bundle.tokenizer.pad_token_id, settings)
    steps = rank_steps(packs, cfg, args.baseline_micro_batch, strategy.rank, strategy.world_size)
    collator = make_collator(data.collate, [mb for step in steps for mb in step], args.data_workers, strategy.device)
    ctx = StepContext(
        module=module, optimizer=optimizer, strategy=strategy, collate=collator.get,
        attention_kwargs=patcher.attention_kwargs, flops_fn=bundle.step_flops, max_grad_norm=1.0,
        input_keys=input_keys,
    )
    warmup_steps = math.ceil(args.warmup / cfg.grad_accum)
    measured = timed_steps(ctx, steps, warmup_steps, strategy.device)
    collator.close()
    if args.profile == name:
        profile_steps(ctx, steps[:2], data, args)
    per_step = cfg.grad_accum * strategy.world_size  # packs of one step, all ranks
    timed_packs = packs[warmup_steps * per_step : len(steps) * per_step]
    audio_seconds = sum(item.seconds for pack in timed_packs for i in pack for item in samples[i].media)
    result = {
        "config": name, **cfg.__dict__, "world_size": strategy.world_size,
        "parallel": "single" if strategy.world_size == 1 else args.parallel,
        **throughput(measured, strategy.world_size, peak),
        "audio_seconds_per_s": audio_seconds / sum(measured.seconds), "attn_backend_resolved": patcher.backend,
    }
    del ctx, module, optimizer, bundle
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def measure_encoder(model_cfg, family, samples: list[Sample], settings: AudioSettings, args) -> dict:
    """ms per second of audio of the encoder alone, stock (30 s windows) vs rmpad, on the first
    `--encoder-clips` clips of the benchmark's samples."""
    lengths = [n for s in samples for item in s.media for n in clip_mel_lengths(item, settings)][: args.encoder_clips]
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model, audio = build_encoder(family, OmegaConf.to_container(model_cfg.config), args.device, dtype)
    costs = encoder_costs(model, audio, lengths, args.encoder_iters, settings.rules.context_frames,
                          warmup=1 if args.tiny else 2)
    del model, audio
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"dtype": str(dtype).removeprefix("torch."), **costs}


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke test: the audio family's CPU-sized preset, fp32, 2 steps (1 timed) of 2048 "
                             "tokens, "
                             f"configs {','.join(TINY_CONFIGS)}; flags given explicitly still win")
    parser.add_argument("--model", default=None, help="an audio preset under conf/model/ (default: the bench preset "
                        "of the first registered audio family)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="cuda (cpu with --tiny)")
    parser.add_argument("--parallel", choices=("auto", "single", "fsdp2"), default="auto",
                        help="auto: fsdp2 under torchrun with more than one rank, else single")
    parser.add_argument("--decoder-layers", type=int, default=None,
                        help="cut the preset's decoder to this many layers (the encoder stays whole): one GPU holds "
                             "Qwen2-Audio-7B's full encoder with ~20 of its 32 decoder layers under fp32 AdamW")
    parser.add_argument("--tokens-per-step", type=int, default=None, help="tokens per pack, per rank (16384)")
    parser.add_argument("--steps", type=int, default=None, help="packs per rank (8); a step takes grad_accum of them")
    parser.add_argument("--warmup", type=int, default=None, help="untimed packs at the start (2)")
    parser.add_argument("--baseline-micro-batch", type=int, default=4)
    parser.add_argument("--configs", default=None, help="comma-separated; the first is the baseline "
                                                        f"(default {','.join(AUDIO_CONFIGS)})")
    parser.add_argument("--data-workers", type=int, default=None, help="processes collating ahead (4; 0 = in the step)")
    parser.add_argument("--encoder-clips", type=int, default=None, help="clips of the encoder-only measurement (16)")
    parser.add_argument("--encoder-iters", type=int, default=None, help="timed encoder iterations (5)")
    parser.add_argument("--profile", default=None, help="a config to profile for 2 extra steps (CUDA)")
    parser.add_argument("--profile-out", default="profile_audio.txt")
    parser.add_argument("--out", default=None, help="JSON output path (rewritten after every configuration)")
    args = parser.parse_args(argv)
    defaults = dict(model=default_preset(AUDIO, tiny=True), device="cpu", tokens_per_step=2048, steps=2, warmup=1,
                    configs=",".join(TINY_CONFIGS), data_workers=0, encoder_clips=2, encoder_iters=1) if args.tiny else \
        dict(model=default_preset(AUDIO), device="cuda", tokens_per_step=16384, steps=8, warmup=2,
             configs=",".join(AUDIO_CONFIGS), data_workers=4, encoder_clips=16, encoder_iters=5)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.parallel == "auto":
        args.parallel = "fsdp2" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "single"
    if args.device == "cpu" and args.parallel != "single":
        raise ValueError("--device cpu runs one process (--parallel single)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is visible; use --tiny (CPU) for a smoke test")
    if args.steps <= args.warmup:
        raise ValueError(f"--steps {args.steps} must exceed --warmup {args.warmup}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    model_cfg, family = load_preset(args.model, AUDIO)
    if args.decoder_layers is not None:
        model_cfg.config.text_config.num_hidden_layers = args.decoder_layers
    processor = family.builtin_processor(OmegaConf.to_container(model_cfg.config))
    settings = audio_settings(processor, processor.tokenizer, 30.0, AUDIO_PAD, None)
    text = model_cfg.config.text_config
    chat = ChatTokens.from_tokenizer(processor.tokenizer, int(text.vocab_size))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    n_packs = args.steps * world
    samples = make_audio_samples(n_packs * args.tokens_per_step // 350, 0, chat, settings)
    longest = min(args.tokens_per_step, int(text.max_position_embeddings))
    samples = [s for s in samples if len(s) <= longest]  # a sample never exceeds a pack or the positions
    packs = make_packs(samples, args.tokens_per_step, n_packs)
    card = device_name(device)
    peak = peak_flops(card) or REFERENCE_PEAK_FLOPS
    is_main = int(os.environ.get("RANK", "0")) == 0
    report = {"model": args.model, "decoder_layers": int(model_cfg.config.text_config.num_hidden_layers),
              "tokens_per_step": args.tokens_per_step, "steps": args.steps, "warmup": args.warmup,
              "baseline_micro_batch": args.baseline_micro_batch, "parallel": args.parallel, "world_size": world,
              "device": args.device, "audio_data": DATA, "data": data_stats(samples, packs, settings),
              **environment(device), "peak_flops": peak,
              "peak_flops_source": "card" if peak_flops(card) else "reference (H100/H200 bf16 dense): not this device's peak",
              "results": [], "encoder": None}
    for name in args.configs.split(","):
        try:
            report["results"].append(run_config(name, model_cfg, family, samples, packs, settings, peak, args))
        except Exception as err:  # one failing configuration must not hide the others' figures
            report["results"].append({"config": name, "error": f"{type(err).__name__}: {str(err)[:300]}"})
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if is_main:
            print(json.dumps(report["results"][-1]), flush=True)
            write_report(report, args.out)
    try:
        report["encoder"] = measure_encoder(model_cfg, family, samples, settings, args)
    except Exception as err:
        report["encoder"] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
    report["results"] = with_ratios(report["results"])
    if is_main:
        print(json.dumps({"encoder": report["encoder"]}), flush=True)
        print(markdown_table(report))
        write_report(report, args.out)
    return report


def write_report(report: dict, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
