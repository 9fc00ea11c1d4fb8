"""Streaming loader benchmark: a synthetic jsonl source of 10M chat records, read by the streaming
data path (data.streaming=true) without a model: host memory and samples/s.

    uv run python scripts/bench_stream.py                       # 10M records, reads 1M of them
    uv run python scripts/bench_stream.py --records 100000 --read 20000 --out /tmp/s.json   # quick

Measured, in one process:
  * loader throughput: micro-batches pulled through `make_step_batches` (read, validate, tokenize
    with the chat template, overlong policy, best-fit packing) and collated, as the training loop
    does with data_workers=0; samples/s and tokens/s over `--read` records from the file's start;
  * host memory: resident set (VmRSS) before the stream and every few seconds while it runs, and
    the peak (ru_maxrss); bounded memory means a flat curve, independent of the source size;
  * a far shard: rank 7 of 8 starts 7/8 into the file (its first window, including the line count
    of the bytes before its shard), and a resume from a position saved there.
The source: record i is a user question and an assistant answer of lengths drawn from a log-normal
distribution (median 10 / 25 words, capped at 200 / 800), one JSON object per line; the byte-level tokenizer
of the tiny built-in model (one token per byte). Results go to --out (JSON) and are summarised in
docs/performance.md / docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np

from lmms_engine.data.dataset import build_sft_dataset
from lmms_engine.data.settings import DataSettings
from lmms_engine.models.tokenizer import build_byte_tokenizer
from lmms_engine.train.data_iter import make_step_batches

WORDS = np.array("the of and to in is that for it as with was on be by this are from at or an have not "
                 "image model data train token audio video pack rank shard window state".split())


def write_source(path: Path, records: int, seed: int = 0) -> float:
    """The synthetic jsonl (written once, reused when it exists with the same record count). Seconds taken."""
    marker = path.with_suffix(".count")
    if path.exists() and marker.exists() and int(marker.read_text()) == records:
        return 0.0
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    block = 100_000
    with path.open("w") as handle:
        for first in range(0, records, block):
            n = min(block, records - first)
            q_len = np.clip(rng.lognormal(np.log(10), 0.6, n), 2, 200).astype(int)
            a_len = np.clip(rng.lognormal(np.log(25), 0.8, n), 2, 800).astype(int)
            words = WORDS[rng.integers(0, len(WORDS), int(q_len.sum() + a_len.sum()))]
            at = 0
            lines = []
            for i in range(n):
                question = " ".join(words[at : at + q_len[i]])
                at += q_len[i]
                answer = " ".join(words[at : at + a_len[i]])
                at += a_len[i]
                # The words need no JSON escaping, so the line is formatted directly (json.dumps is the slow part).
                lines.append(f'{{"id": {first + i}, "messages": [{{"role": "user", "content": "{question}"}}, '
                             f'{{"role": "assistant", "content": "{answer}"}}]}}')
            handle.write("\n".join(lines) + "\n")
    marker.write_text(str(records))
    return time.perf_counter() - start


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_through(dataset, records: int, rank: int = 0, world: int = 1, state: dict | None = None,
                 sample_every_s: float = 5.0) -> dict:
    """Pull micro-batches (collated) until `records` records were read; throughput and RSS curve."""
    steps = make_step_batches(dataset, 1, rank, world, state)
    samples = tokens = 0
    curve = [(0.0, round(rss_mb(), 1))]
    start = last = time.perf_counter()
    first_batch_s = None
    while steps.counters.records < records:
        for micro_batch in steps.next_step():
            batch = dataset.collate(micro_batch)
            samples += len(micro_batch)
            tokens += int(batch["input_ids"].numel())
        now = time.perf_counter()
        if first_batch_s is None:
            first_batch_s = now - start
        if now - last >= sample_every_s:
            curve.append((round(now - start, 1), round(rss_mb(), 1)))
            last = now
    seconds = time.perf_counter() - start
    curve.append((round(seconds, 1), round(rss_mb(), 1)))
    return {
        "records_read": steps.counters.records,
        "samples": samples,
        "seconds": round(seconds, 2),
        "samples_per_s": round(samples / seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1),
        "first_batch_s": round(first_batch_s, 3),
        "rss_mb_curve": curve,
        "state": steps.state_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=10_000_000, help="records in the synthetic source")
    parser.add_argument("--read", type=int, default=1_000_000, help="records the loader reads from the start")
    parser.add_argument("--far-read", type=int, default=50_000, help="records read by rank 7 of 8 and its resume")
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--packing-length", type=int, default=4096)
    parser.add_argument("--source", type=Path, default=Path("/tmp/lmms_stream_bench/source.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("docs/perf/stream_loader.json"))
    args = parser.parse_args()

    args.source.parent.mkdir(parents=True, exist_ok=True)
    generate_s = write_source(args.source, args.records)
    tokenizer = build_byte_tokenizer()
    dataset = build_sft_dataset(tokenizer, DataSettings(args.source, streaming=True, stream_window=args.window,
                                                        packing_length=args.packing_length, overlong="truncate"))
    rss_before = rss_mb()
    head = read_through(dataset, args.read)
    far = read_through(dataset, args.far_read, rank=7, world=8)
    resumed = read_through(dataset, args.far_read, rank=7, world=8, state=far.pop("state"))
    head.pop("state")
    resumed.pop("state")
    result = {
        "benchmark": "stream_loader",
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cpus",
        "source": {"path": str(args.source), "records": args.records,
                   "bytes": args.source.stat().st_size, "generate_s": round(generate_s, 1)},
        "settings": {"window": args.window, "packing_length": args.packing_length, "tokenizer": "byte-level (tiny)",
                     "data_workers": 0},
        "rss_mb_before_stream": round(rss_before, 1),
        "head": head,
        "rank7_of_8": far,
        "rank7_of_8_resumed": resumed,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("head", "rank7_of_8", "rank7_of_8_resumed")}))
    print("head:", {k: v for k, v in head.items() if k != "rss_mb_curve"}, "rss curve:", head["rss_mb_curve"])
    print("rank 7/8:", {k: v for k, v in far.items() if k != "rss_mb_curve"})
    print("resumed:", {k: v for k, v in resumed.items() if k != "rss_mb_curve"})


if __name__ == "__main__":
    main()
