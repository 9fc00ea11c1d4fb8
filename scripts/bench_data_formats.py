"""Peak memory of a Hugging Face-style parquet with embedded images: prepare it, then collate every
micro-batch (pixels made from the bytes read back from the parquet), as training does.

    uv run python scripts/bench_data_formats.py [--records 20000] [--size 64] [--num-proc N]

The parquet (OpenAI messages with payload-less `{"type": "image"}` parts, an `images` column of
`datasets` Image structs {bytes, path}: one noisy PNG per record, so it barely compresses) is
written first, in row groups of 100 as `push_to_hub` writes image sets; then the peak resident set
(VmHWM, reset between phases through /proc/self/clear_refs) is read after each phase. Prepare
workers are separate processes: their peak is reported apart (RUSAGE_CHILDREN). Writes one JSON
object to stdout; everything lives in a temporary folder that is removed after.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from lmms_engine.data.check import load_inputs
from lmms_engine.data.dataset import build_sft_dataset
from lmms_engine.data.settings import DataSettings
from lmms_engine.data.prepare import default_num_proc
from lmms_engine.models.family import VISION
from lmms_engine.models.registry import default_family

ROW_GROUP = 100  # datasets' parquet row group size for image data sets
SCHEMA = pa.schema({
    "messages": pa.list_(pa.struct({"role": pa.string(), "content": pa.list_(
        pa.struct({"type": pa.string(), "text": pa.string()}))})),
    "images": pa.list_(pa.struct({"bytes": pa.binary(), "path": pa.string()})),
})


def png(rng: np.random.Generator, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def rows(rng: np.random.Generator, start: int, stop: int, size: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image", "text": None},
                                             {"type": "text", "text": f"What is in picture {i}?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": f"Noise, seed {i}."}]},
            ],
            "images": [{"bytes": png(rng, size), "path": f"{i}.png"}],
        }
        for i in range(start, stop)
    ]


def write_parquet(path: Path, records: int, size: int) -> None:
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(path, SCHEMA) as writer:
        for start in range(0, records, ROW_GROUP):
            batch = rows(rng, start, min(start + ROW_GROUP, records), size)
            writer.write_table(pa.Table.from_pylist(batch, schema=SCHEMA), row_group_size=ROW_GROUP)


def peak_mb() -> float:
    """This process's peak resident set since the last reset (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def current_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # "5": reset the peak RSS to the current RSS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--num-proc", type=int, default=default_num_proc())
    parser.add_argument("--packing-length", type=int, default=4096)
    args = parser.parse_args()
    tiny_vl = default_family(VISION).presets[0]  # the first vision-language family's CPU-sized preset
    tokenizer, processor, spec = load_inputs(None, tiny_vl)
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "embedded.parquet", Path(tmp) / "cache"
        started = time.perf_counter()
        write_parquet(data, args.records, args.size)
        write_s = time.perf_counter() - started
        reset_peak()
        before = current_mb()
        started = time.perf_counter()
        settings = DataSettings(data, num_proc=args.num_proc, cache_dir=cache, packing_length=args.packing_length)
        dataset = build_sft_dataset(tokenizer, settings, processor=processor, mrope_spec=spec)
        prepare_s, prepare_peak = time.perf_counter() - started, peak_mb()
        reset_peak()
        started, pixels = time.perf_counter(), 0
        for indices in dataset.micro_batches(0):
            pixels += dataset.collate(indices)["pixel_values"].shape[0]
        iterate_s, iterate_peak = time.perf_counter() - started, peak_mb()
        report = {
            "records": args.records,
            "image": f"{args.size}x{args.size} PNG (noise)",
            "parquet_mb": round(data.stat().st_size / 2**20, 1),
            "decoded_pixels_mb_if_held": round(args.records * args.size**2 * 3 / 2**20, 1),
            "write_s": round(write_s, 1),
            "rss_before_prepare_mb": round(before),
            "peak_rss_prepare_mb": round(prepare_peak),
            "peak_rss_prepare_workers_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "prepare_s": round(prepare_s, 1),
            "micro_batches": len(dataset.micro_batches(0)),
            "patches": pixels,
            "peak_rss_iterate_mb": round(iterate_peak),
            "iterate_s": round(iterate_s, 1),
            "num_proc": args.num_proc,
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.processor() or platform.platform()}",
            "python": platform.python_version(),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
