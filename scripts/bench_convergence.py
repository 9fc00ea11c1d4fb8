"""Does FP8 train like bf16? The same steps of the same data, from the same random init, once per
configuration, on one GPU; both loss curves and the final-loss ratio go to a JSON file.

    python scripts/bench_convergence.py --out docs/perf/convergence_1.5b.json

Defaults: the 1.5B shape (qwen2_5_1_5b, random init), 300 steps of one 16,384-token pack, AdamW at
3e-4 after 30 warm-up steps (constant after), gradient clipping at 1.0; bf16 = the compiled Liger
configuration of scripts/bench_train.py, fp8 = the same with kernels.fp8 (about 2 x 2-3 minutes on
an H200, compile included). The data must be learnable for the curves to mean something: each
document is a sequence of fixed random 8-token "phrases" (2,000 of them, so a phrase's first token
costs ln 2000 and the other seven are predictable), followed by a verbatim copy of itself (learnable
by induction). Labels cover the whole document. The final loss is the mean of the last 20 steps;
`final_loss_ratio` = fp8 / bf16 (the issue asks for it within 1%).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import environment, synchronize  # noqa: E402
from bench_train import build_context, config_for, load_text_model  # noqa: E402

from lmms_engine.data.packing import pack_best_fit_decreasing  # noqa: E402
from lmms_engine.data.types import Sample  # noqa: E402
from lmms_engine.train.loop import set_learning_rate, train_step  # noqa: E402

PHRASES, PHRASE_LEN = 2000, 8
FINAL_WINDOW = 20


def phrase_documents(n: int, seed: int, vocab: int) -> list[Sample]:
    """n documents: random phrases (log-normal length, median 600 tokens) then their copy."""
    rng = np.random.default_rng(seed)
    table = rng.integers(256, vocab, size=(PHRASES, PHRASE_LEN), dtype=np.int32)
    halves = np.clip(rng.lognormal(np.log(300), 0.9, size=n), 24, 4096).astype(int) // PHRASE_LEN
    samples = []
    for i, count in enumerate(halves):
        half = table[rng.integers(0, PHRASES, size=max(count, 3))].ravel()
        ids = np.concatenate([half, half])
        samples.append(Sample(input_ids=ids, labels=ids.copy(), sample_id=f"phrases:{i}"))
    return samples


def make_packs(samples: list[Sample], tokens: int, n_steps: int) -> list[list[int]]:
    packs = pack_best_fit_decreasing(np.array([len(s) for s in samples]), tokens)
    full = sorted(packs, key=lambda p: -sum(len(samples[i]) for i in p))[:n_steps]
    if len(full) < n_steps:
        raise ValueError(f"only {len(full)} packs of {tokens} tokens; generate more documents")
    rng = np.random.default_rng(1)
    return [full[i] for i in rng.permutation(len(full))]  # not longest-first: a fixed, shuffled order


def lr_at(step: int, peak: float, warmup: int) -> float:
    return peak * min(1.0, (step + 1) / warmup)


def run_curve(name: str, model_cfg, samples: list[Sample], packs: list[list[int]], args) -> dict:
    cfg = config_for(name)
    ctx, _ = build_context(cfg, model_cfg, samples, "single", lr=args.lr)
    losses, seconds = [], []
    for step, pack in enumerate(packs):
        set_learning_rate(ctx.optimizer, lr_at(step, args.lr, args.warmup_steps))
        synchronize(ctx.strategy.device)
        start = time.perf_counter()
        stats = train_step(ctx, [pack])
        synchronize(ctx.strategy.device)
        seconds.append(time.perf_counter() - start)
        losses.append(stats["loss"])
        if step % 50 == 0:
            print(f"{name} step {step}: loss {stats['loss']:.4f} ({seconds[-1]:.2f} s)", flush=True)
    steady = seconds[3:]
    tokens = sum(sum(len(samples[i]) for i in pack) for pack in packs[3:])
    del ctx
    gc.collect()
    torch.cuda.empty_cache()
    return {"config": name, "losses": losses, "final_loss": float(np.mean(losses[-FINAL_WINDOW:])),
            "tokens_per_s": tokens / sum(steady), "first_steps_s": [round(s, 2) for s in seconds[:3]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2_5_1_5b", help="a text preset under conf/model/")
    parser.add_argument("--decoder-layers", type=int, default=None, help="cut the preset to this many decoder layers")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--tokens-per-step", type=int, default=16384)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--bf16", default="liger_rmpad_varlen_noac_compile", help="the reference configuration")
    parser.add_argument("--fp8", default="liger_rmpad_varlen_noac_compile_fp8", help="the configuration compared")
    parser.add_argument("--out", default=None, help="JSON output path")
    args = parser.parse_args()
    model_cfg = load_text_model(args.model, args.decoder_layers)
    samples = phrase_documents(args.steps * args.tokens_per_step // 400, 0, model_cfg.config.vocab_size)
    packs = make_packs(samples, args.tokens_per_step, args.steps)
    curves = [run_curve(name, model_cfg, samples, packs, args) for name in (args.bf16, args.fp8)]
    report = {"model": args.model, "steps": args.steps, "tokens_per_step": args.tokens_per_step, "lr": args.lr,
              "warmup_steps": args.warmup_steps, "final_window": FINAL_WINDOW, **environment(),
              "final_loss_ratio": curves[1]["final_loss"] / curves[0]["final_loss"],
              "speedup": curves[1]["tokens_per_s"] / curves[0]["tokens_per_s"], "curves": curves}
    print(json.dumps({k: v for k, v in report.items() if k != "curves"}, indent=1))
    for c in curves:
        print(f"{c['config']}: final loss {c['final_loss']:.4f}, {c['tokens_per_s']:,.0f} tok/s, first steps {c['first_steps_s']} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
