"""On-disk cache of tokenized source files.

One uncompressed `.npz` per (source file, tokenizer, settings): flat int32 tokens and labels,
int64 offsets and record locations, the skip counters, and the media table (`media_*` arrays:
kinds and paths as numpy unicode arrays, grids, seconds per grid step, frame counts, audio sample
counts / rates / clip lengths; empty for text data). Media settings (pixel bounds, frame sampling,
audio clip length, feature extractor geometry) are part of the key. No pickle anywhere (the file
is loaded with allow_pickle=False), so a cache file can be trusted as much as a numpy array. Files
are written to a temporary name and moved into place with os.replace, so a reader never sees half
a file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from .modalities import MediaSupport
from .sources import SourceFile
from .types import MediaTable, TokenizedFile

logger = logging.getLogger("lmms_engine.data")

# Bump when tokenization or label masking changes: old cache files then stop matching.
CACHE_FORMAT_VERSION = 5
CACHE_ENV_VAR = "LMMS_ENGINE_CACHE"


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    """`cache_dir`, else $LMMS_ENGINE_CACHE, else ~/.cache/lmms_engine."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from_env = os.environ.get(CACHE_ENV_VAR)
    return Path(from_env).expanduser() if from_env else Path.home() / ".cache" / "lmms_engine"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything about the tokenizer that changes tokens or labels."""
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    digest.update(tokenizer.backend_tokenizer.to_str().encode())  # vocab, merges, added tokens, ...
    digest.update(json.dumps(tokenizer.chat_template, sort_keys=True).encode())
    specials = {name: str(value) for name, value in tokenizer.special_tokens_map.items()}
    digest.update(json.dumps(specials, sort_keys=True).encode())
    return digest.hexdigest()


def cache_file_for(
    cache_dir: Path, source: SourceFile, fingerprint: str, on_error: str, media: MediaSupport | None = None
) -> Path:
    key = {
        "version": CACHE_FORMAT_VERSION,
        "path": str(source.path.resolve()),
        "data_type": source.data_type,
        "data_format": source.data_format,
        "files": _file_identity(source.path),
        "tokenizer": fingerprint,
        "on_error": on_error,
        # Relative media paths resolve under data_folder (the working directory when it has none).
        "data_folder": str(Path(source.data_folder or ".").absolute()),
        "media": media.cache_key() if media is not None else None,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir / "sft" / f"{source.path.stem}-{digest}.npz"


def _file_identity(path: Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of the file, or of every file of a save_to_disk folder."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [
        (str(p.relative_to(path)) if path.is_dir() else p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in files
    ]


@contextmanager
def locked(cache_file: Path) -> Iterator[None]:
    """An exclusive inter-process lock for one cache entry (an flock on a side file)."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with open(cache_file.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def save_tokenized(cache_file: Path, tokenized: TokenizedFile) -> None:
    reasons = sorted(tokenized.skipped_by_reason)
    temporary = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.tmp.npz")
    np.savez(
        temporary,
        input_ids=tokenized.input_ids,
        labels=tokenized.labels,
        offsets=tokenized.offsets,
        locations=tokenized.locations,
        records=np.asarray(tokenized.records, dtype=np.int64),
        skip_reasons=np.asarray(reasons, dtype=np.str_),
        skip_counts=np.asarray([tokenized.skipped_by_reason[r] for r in reasons], dtype=np.int64),
        skip_examples=np.asarray(tokenized.skip_examples, dtype=np.str_),
        format_names=np.asarray(sorted(tokenized.formats), dtype=np.str_),
        format_counts=np.asarray([tokenized.formats[f] for f in sorted(tokenized.formats)], dtype=np.int64),
        **{f"media_{name}": getattr(tokenized.media, name) for name in MediaTable.ARRAYS},
    )
    os.replace(temporary, cache_file)


def load_tokenized(cache_file: Path) -> TokenizedFile | None:
    """The cached result, or None when absent or unreadable (then it is simply rebuilt)."""
    if not cache_file.exists():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as saved:
            return TokenizedFile(
                input_ids=saved["input_ids"],
                labels=saved["labels"],
                offsets=saved["offsets"],
                locations=saved["locations"],
                records=int(saved["records"]),
                media=MediaTable(**{name: saved[f"media_{name}"] for name in MediaTable.ARRAYS}),
                skipped_by_reason={
                    str(r): int(c) for r, c in zip(saved["skip_reasons"], saved["skip_counts"], strict=True)
                },
                skip_examples=[str(e) for e in saved["skip_examples"]],
                formats={
                    str(f): int(c) for f, c in zip(saved["format_names"], saved["format_counts"], strict=True)
                },
            )
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        logger.warning("ignoring unreadable cache file %s (%s); rebuilding it", cache_file, error)
        return None
