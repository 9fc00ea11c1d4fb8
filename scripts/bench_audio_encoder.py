"""Audio encoder cost per second of audio, padded (stock) vs rmpad (models/audio_encoder.py).

    python scripts/bench_audio_encoder.py --model qwen2_audio_7b --clips 16 --out docs/perf/bench_audio_encoder.json

The encoder of the preset's shape (random init, bf16), forward + backward on `--clips` clips with
durations drawn uniformly from 2..30 s (seeded): the stock encoder on the processor's layout (every
clip padded to 30 s = 3000 mel frames, transformers' sdpa), and `audio_features_varlen` on each clip's
real frames (+2 of conv context) with the fastest bidirectional varlen kernel. Same clips, same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import Qwen2AudioEncoderConfig
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import synchronize  # noqa: E402

from lmms_engine.models.qwen2_audio.encoder import (  # noqa: E402
    CONV_CONTEXT_FRAMES,
    audio_features_varlen,
    max_mel_frames,
    patch_audio_attention,
)

REPO = Path(__file__).resolve().parents[1]
FRAMES_PER_SECOND = 100


def timed(fn, iters: int, warmup: int, device: torch.device) -> float:
    """Mean seconds of forward + backward of `fn()` over `iters` calls after `warmup` untimed ones."""
    for i in range(warmup + iters):
        if i == warmup:
            synchronize(device)
            start = time.perf_counter()
        fn().float().square().mean().backward()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def build_encoder(audio_config: dict, device: str, dtype: torch.dtype) -> Qwen2AudioEncoder:
    """The stock encoder of a preset's `audio_config`, seeded random init, transformers' sdpa."""
    torch.manual_seed(0)
    config = Qwen2AudioEncoderConfig(**audio_config, attn_implementation="sdpa")
    encoder = Qwen2AudioEncoder(config).to(device=device, dtype=dtype)
    patch_audio_attention(encoder)  # the rmpad path's varlen forward; stock calls keep the stock one
    return encoder


def encoder_costs(encoder: Qwen2AudioEncoder, lengths: list[int], iters: int, warmup: int = 2) -> dict:
    """Forward + backward of the same clips (`lengths` valid mel frames each): the stock encoder on
    the processor's layout (every clip padded to the 30 s window, padding zeroed) against
    `audio_features_varlen` on each clip's real frames (+ conv context)."""
    device, dtype = encoder.conv1.weight.device, encoder.conv1.weight.dtype
    window = max_mel_frames(encoder)
    padded = torch.randn(len(lengths), encoder.num_mel_bins, window, device=device, dtype=dtype)
    for row, n in enumerate(lengths):
        padded[row, :, n:] = 0
    clips = [padded[row, :, : min(n + CONV_CONTEXT_FRAMES, window)] for row, n in enumerate(lengths)]
    stock_s = timed(lambda: encoder(padded).last_hidden_state, iters, warmup, device)
    varlen_s = timed(lambda: audio_features_varlen(encoder, clips, lengths).features, iters, warmup, device)
    audio_seconds = float(sum(lengths)) / FRAMES_PER_SECOND
    return {
        "clips": len(lengths), "audio_seconds": audio_seconds, "padded_seconds": window / FRAMES_PER_SECOND * len(lengths),
        "stock_step_s": stock_s, "rmpad_step_s": varlen_s, "speedup": stock_s / varlen_s,
        "stock_ms_per_audio_second": 1000 * stock_s / audio_seconds,
        "rmpad_ms_per_audio_second": 1000 * varlen_s / audio_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2_audio_7b")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    audio_config = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / f"{args.model}.yaml").config.audio_config)
    encoder = build_encoder(audio_config, "cuda", torch.bfloat16)
    seconds = np.random.default_rng(0).uniform(2, 30, size=args.clips)
    lengths = [int(s * FRAMES_PER_SECOND) for s in seconds]
    report = {"model": args.model, "card": torch.cuda.get_device_name(), "torch": torch.__version__,
              **encoder_costs(encoder, lengths, args.iters)}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
