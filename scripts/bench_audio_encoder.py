"""Audio encoder cost per second of audio, padded (stock) vs rmpad (the family's varlen encoder path).

    python scripts/bench_audio_encoder.py --clips 16 --out docs/perf/bench_audio_encoder.json
    python scripts/bench_audio_encoder.py --model PRESET ...   # any audio preset under conf/model/

The encoder of the preset's shape (default: the first registered audio family's bench preset,
Qwen2-Audio-7B; random init, bf16, built by its family with a one-layer decoder, which is not
measured), forward + backward on `--clips` clips with durations drawn uniformly from 2..30 s
(seeded): the stock encoder module on the processor's layout (every clip padded to 30 s = 3000 mel
frames, transformers' sdpa), and the family's rmpad path (`encode`) on each clip's real frames (+ the
encoder's conv context) with the fastest bidirectional varlen kernel. Same clips, same run.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import default_preset, load_preset, synchronize  # noqa: E402

from lmms_engine.models.family import AUDIO  # noqa: E402

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


def build_encoder(family, model_config: dict, device: str, dtype: torch.dtype):
    """(model, its audio ModalityEncoder): the family's model of a preset's `config` with a one-layer
    decoder, seeded random init, in `dtype`; the encoder keeps transformers' sdpa for stock calls and
    gets the varlen forward for the rmpad path."""
    torch.manual_seed(0)
    config = copy.deepcopy(model_config)
    config["text_config"]["num_hidden_layers"] = 1  # the decoder is not measured
    with torch.device(device):
        bundle = family.build(name="audio_encoder", config=config)
    model = bundle.model.to(dtype=dtype)
    audio = next(encoder for encoder in bundle.encoders if encoder.name == "audio")
    audio.patch_kernels(model, torch.device(device))
    return model, audio


def encoder_costs(model, audio, lengths: list[int], iters: int, context_frames: int, warmup: int = 2) -> dict:
    """Forward + backward of the same clips (`lengths` valid mel frames each): the stock encoder on
    the processor's layout (every clip padded to the 30 s window, padding zeroed) against the rmpad
    path on each clip's real frames (+ `context_frames` of conv context)."""
    encoder = audio.module(model)
    device, dtype = encoder.conv1.weight.device, encoder.conv1.weight.dtype
    window = audio.max_frames(model)
    padded = torch.randn(len(lengths), encoder.num_mel_bins, window, device=device, dtype=dtype)
    for row, n in enumerate(lengths):
        padded[row, :, n:] = 0
    clips = [padded[row, :, : min(n + context_frames, window)] for row, n in enumerate(lengths)]
    stock_s = timed(lambda: encoder(padded).last_hidden_state, iters, warmup, device)
    varlen_s = timed(lambda: audio.encode(model, clips, lengths), iters, warmup, device)
    audio_seconds = float(sum(lengths)) / FRAMES_PER_SECOND
    return {
        "clips": len(lengths), "audio_seconds": audio_seconds, "padded_seconds": window / FRAMES_PER_SECOND * len(lengths),
        "stock_step_s": stock_s, "rmpad_step_s": varlen_s, "speedup": stock_s / varlen_s,
        "stock_ms_per_audio_second": 1000 * stock_s / audio_seconds,
        "rmpad_ms_per_audio_second": 1000 * varlen_s / audio_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="an audio preset under conf/model/ (default: the bench preset "
                        "of the first registered audio family)")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.model = args.model or default_preset(AUDIO)
    model_cfg, family = load_preset(args.model, AUDIO)
    model, audio = build_encoder(family, OmegaConf.to_container(model_cfg.config), "cuda", torch.bfloat16)
    seconds = np.random.default_rng(0).uniform(2, 30, size=args.clips)
    lengths = [int(s * FRAMES_PER_SECOND) for s in seconds]
    report = {"model": args.model, "card": torch.cuda.get_device_name(), "torch": torch.__version__,
              **encoder_costs(model, audio, lengths, args.iters, family.media.audio.context_frames)}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
