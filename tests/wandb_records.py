"""Read the records of an offline wandb run file (`<run_dir>/wandb/offline-run-*/run-*.wandb`).

The file is wandb's LevelDB-style log: a 7-byte header (`:W&B`, magic, version), then 32 KiB blocks of
chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last); a block's
tail shorter than a header is padding. Each whole record is a `wandb_internal_pb2.Record`."""

from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, LAST = 1, 4


def records(path: Path) -> list:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    found, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            break
        pending += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
            pending = b""
    return found


def run_records(run_dir: Path) -> list:
    """The `run` record of every offline wandb run file under `run_dir`, oldest first."""
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    return [r.run for f in files for r in records(f) if r.WhichOneof("record_type") == "run"]


def summary_keys(run_dir: Path) -> set[str]:
    keys = set()
    for f in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        for r in records(f):
            if r.WhichOneof("record_type") == "summary":
                keys |= {item.key or item.nested_key[0] for item in r.summary.update}
    return keys
