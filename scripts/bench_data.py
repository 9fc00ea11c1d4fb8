"""Time data preparation: a synthetic 100k-record chat jsonl, cold (tokenize) and warm (cache).

    uv run python scripts/bench_data.py [--records 100000] [--num-proc N] [--packing-length 2048]

Writes one JSON object to stdout. Everything lives in a temporary folder that is removed after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

from lmms_engine.data.dataset import build_sft_dataset
from lmms_engine.data.settings import DataSettings
from lmms_engine.data.prepare import default_num_proc
from lmms_engine.models.tokenizer import build_byte_tokenizer

WORDS = (
    "model data token train learn batch layer vector signal graph value matrix sample answer "
    "question river mountain city number letter planet energy light sound water"
).split()


def synthetic_record(rng: random.Random) -> dict:
    """A chat of 1-3 exchanges, sometimes with a system prompt: about 150-900 bytes."""
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": "You are a helpful assistant."})
    for _ in range(rng.choice((1, 1, 2, 3))):
        messages.append({"role": "user", "content": _sentence(rng, 6, 30) + "?"})
        messages.append({"role": "assistant", "content": _sentence(rng, 10, 60) + "."})
    return {"messages": messages}


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize()


def write_jsonl(path: Path, records: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(records):
            handle.write(json.dumps(synthetic_record(rng)) + "\n")


def timed_build(tokenizer, data: Path, cache: Path, num_proc: int, packing_length: int):
    started = time.perf_counter()
    dataset = build_sft_dataset(
        tokenizer, DataSettings(data, packing_length=packing_length, num_proc=num_proc, cache_dir=cache)
    )
    return time.perf_counter() - started, dataset


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--num-proc", type=int, default=default_num_proc())
    parser.add_argument("--packing-length", type=int, default=2048)
    args = parser.parse_args()
    tokenizer = build_byte_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "synthetic.jsonl", Path(tmp) / "cache"
        write_jsonl(data, args.records)
        cold_s, dataset = timed_build(tokenizer, data, cache, args.num_proc, args.packing_length)
        warm_s, warm = timed_build(tokenizer, data, cache, args.num_proc, args.packing_length)
        assert warm.stats == dataset.stats, "cache hit changed the dataset"
        report = {
            "records": args.records,
            "file_mb": round(data.stat().st_size / 2**20, 1),
            "tokens": dataset.stats["tokens"],
            "packs": dataset.stats["packs"],
            "pack_fill": dataset.stats["pack_fill"],
            "num_proc": args.num_proc,
            "cold_s": round(cold_s, 2),
            "warm_s": round(warm_s, 2),
            "cold_records_per_s": round(args.records / cold_s),
            "tokenizer": "byte-level (one token per UTF-8 byte)",
            "cpu_count": os.cpu_count(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "python": sys.version.split()[0],
        }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
