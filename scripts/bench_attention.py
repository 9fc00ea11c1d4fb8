"""Packed attention alone, forward + backward, per backend: the kernel each `kernels.attn_backend` runs.

    python scripts/bench_attention.py --out docs/perf/attention_h200.json

Each layout is one pack of documents (cu_seqlens), Qwen2.5-1.5B heads by default (12 query heads,
2 KV heads, head dim 128, bf16), causal; `--bidirectional` measures the encoders' case instead.
TF/s counts the causal work actually needed (half the square per document), forward + backward
(2.5x the forward's 4·T²·H·D/2 FLOPs), as FlashAttention's own benchmarks do.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_common import environment

from lmms_engine.kernels import attention

LAYOUTS = {"16x1k": [1024] * 16, "4x4k": [4096] * 4, "1x32k": [32768], "1x128k": [131072]}


def attention_flops(lengths: list[int], heads: int, dim: int, causal: bool) -> float:
    """Forward + backward FLOPs of attention over documents of `lengths`."""
    forward = sum(4 * n * n * heads * dim for n in lengths) * (0.5 if causal else 1.0)
    return 3.5 * forward  # backward = 2.5x forward


def time_backend(backend: str, lengths: list[int], heads: int, kv_heads: int, dim: int, causal: bool,
                 iters: int) -> float:
    """Milliseconds of one forward + backward, averaged over `iters` after two warm-up calls."""
    total = sum(lengths)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(total, heads, dim, device="cuda", dtype=torch.bfloat16, generator=gen, requires_grad=True)
    k, v = (torch.randn(total, kv_heads, dim, device="cuda", dtype=torch.bfloat16, generator=gen, requires_grad=True)
            for _ in range(2))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    grad = torch.randn(total, heads, dim, device="cuda", dtype=torch.bfloat16, generator=gen)

    def step():
        out = attention.varlen_attention(q, k, v, cu, max(lengths), None, causal=causal, backend=backend)
        out.backward(grad)

    for _ in range(2):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="torch_varlen,fa4", help="comma-separated; the first is the baseline")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated of {list(LAYOUTS)}")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--bidirectional", action="store_true", help="encoders' attention (no causal mask)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    causal = not args.bidirectional
    rows = []
    for layout in args.layouts.split(","):
        lengths = LAYOUTS[layout]
        flops = attention_flops(lengths, args.heads, args.dim, causal)
        for backend in args.backends.split(","):
            if not attention.is_available(backend, torch.device("cuda")):
                rows.append({"layout": layout, "backend": backend, "error": "not available"})
                continue
            ms = time_backend(backend, lengths, args.heads, args.kv_heads, args.dim, causal, args.iters)
            rows.append({"layout": layout, "backend": backend, "ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1)})
            print(json.dumps(rows[-1]), flush=True)
    report = {"heads": args.heads, "kv_heads": args.kv_heads, "dim": args.dim, "causal": causal, **environment(),
              "results": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
