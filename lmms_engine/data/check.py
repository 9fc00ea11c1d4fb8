"""`lmms-data check`: read a dataset the way training does and report every bad record.

    uv run lmms-data check path/to/datasets.yaml                      # built-in VL processor
    uv run lmms-data check data.jsonl --tokenizer Qwen/Qwen2.5-0.5B-Instruct
    uv run lmms-data check lmms_engine/data/demo/demo_audio.yaml --model tiny_omni

Every source file is tokenized with `on_error=skip` semantics (no cache, so nothing is hidden by
an earlier run), media files are measured and decoded exactly as at prepare time, and every
skipped record is printed as `file:line` (jsonl) or `file#index` (other formats) with its reason.
A summary follows: records, valid samples, skips by reason, sample token lengths and media
counts. Exit status 1 if any record or source is bad, else 0.

Tokenizer / processor: by default the built-in processor of the first registered vision-language
family (Qwen2.5-VL's: byte-level tokenizer, so token counts are indicative; images and video are
checked). `--tokenizer <hub id or path>` loads that processor or tokenizer; `--model <preset>`
builds conf/model/<preset>.yaml (structure only, on the meta device: no weights) and takes its
`data_inputs()`, as training does.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .chat import check_tokenizer
from .dataset import media_inputs
from .errors import DataError, TemplateError
from .modalities import MediaOptions, media_support
from .prepare import default_num_proc, tokenize_file
from .sources import SourceFile, resolve_sources
from .types import TokenizedFile

REPO_CONF = Path(__file__).resolve().parents[2] / "conf"
LENGTH_THRESHOLDS = (2048, 4096, 8192, 16384)
@dataclass
class CheckReport:
    """What `check_dataset` found: per-file tokenized results and every skipped record's error."""

    files: dict[SourceFile, TokenizedFile]
    errors: list[DataError]

    @property
    def records(self) -> int:
        return sum(f.records for f in self.files.values())

    @property
    def samples(self) -> int:
        return sum(f.num_samples for f in self.files.values())

    def lengths(self) -> np.ndarray:
        parts = [np.diff(f.offsets) for f in self.files.values()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def media_counts(self) -> Counter:
        counts = Counter()
        for tokenized in self.files.values():
            counts.update(str(kind) for kind in tokenized.media.kinds)
        return counts


def check_dataset(
    dataset_path: str | Path,
    tokenizer,
    processor=None,
    mrope_spec=None,
    num_proc: int | None = None,
    allow_path_escape: bool = False,
) -> CheckReport:
    """Tokenize every distinct source of `dataset_path` (skip semantics, no cache) and collect all
    DataErrors. Config mistakes (DataSourceError, TemplateError, ValueError) are raised."""
    check_tokenizer(tokenizer)
    options = MediaOptions(allow_path_escape=allow_path_escape)  # the data config's defaults
    media = None
    if processor is not None and mrope_spec is None:  # no model to check the processor against
        media = media_support(processor, tokenizer, options)
    elif processor is not None:  # as training: the processor must match the model's mrope ids
        media = media_inputs(processor, mrope_spec, tokenizer, options).support
    procs = num_proc if num_proc is not None else default_num_proc()
    files: dict[SourceFile, TokenizedFile] = {}
    errors: list[DataError] = []
    for entry in resolve_sources(dataset_path):
        for source in entry.files:
            if source not in files:
                files[source] = tokenize_file(source, tokenizer, "skip", procs, media, all_errors=errors)
    return CheckReport(files=files, errors=errors)


# ---------------------------------------------------------------- tokenizer / processor


def load_inputs(tokenizer_arg: str | None, model_arg: str | None) -> tuple[object, object, object]:
    """(tokenizer, processor or None, mrope_spec or None) for the command line's choice."""
    if model_arg is not None:
        return _from_model_preset(model_arg)
    if tokenizer_arg in (None, "builtin"):
        from lmms_engine.models.family import VISION
        from lmms_engine.models.registry import default_family

        processor = default_family(VISION).builtin_processor({})
        return processor.tokenizer, processor, None
    from transformers import AutoProcessor

    loaded = AutoProcessor.from_pretrained(tokenizer_arg)
    if hasattr(loaded, "image_processor") or hasattr(loaded, "feature_extractor"):
        return loaded.tokenizer, loaded, None
    return getattr(loaded, "tokenizer", loaded), None, None


def _from_model_preset(name: str) -> tuple[object, object, object]:
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    preset = REPO_CONF / "model" / f"{name}.yaml"
    if not preset.is_file():
        known = sorted(p.stem for p in (REPO_CONF / "model").glob("*.yaml"))
        raise ValueError(f"no model preset {name!r} ({preset}); known presets: {', '.join(known)}")
    with torch.device("meta"):  # the module tree only: data_inputs() needs the config, not weights
        bundle = instantiate(OmegaConf.load(preset), _convert_="all", structure_only=True)
    inputs = bundle.data_inputs()
    return bundle.tokenizer, inputs.get("processor"), inputs.get("mrope_spec")


# ---------------------------------------------------------------- report


def print_report(report: CheckReport, dataset_path: str, out=None) -> None:
    out = out or sys.stdout
    for error in report.errors:
        print(f"{error.where}: [{error.reason}] {error.problem}", file=out)
    if report.errors:
        print(file=out)
    print(f"lmms-data check {dataset_path}", file=out)
    for source, tokenized in report.files.items():
        skipped = tokenized.records - tokenized.num_samples
        print(
            f"  {source.path} ({source.data_type}, format {format_summary(tokenized)}): "
            f"{tokenized.records} records, {tokenized.num_samples} valid, {skipped} skipped",
            file=out,
        )
    by_reason = Counter(error.reason for error in report.errors)
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(by_reason.items()))
    print(f"records:        {report.records}", file=out)
    print(f"valid samples:  {report.samples}", file=out)
    print(f"skipped:        {len(report.errors)}" + (f" ({reasons})" if reasons else ""), file=out)
    lengths = report.lengths()
    if len(lengths):
        print(
            f"tokens/sample:  min {lengths.min()}  median {np.median(lengths):.0f}  "
            f"p95 {np.percentile(lengths, 95):.0f}  max {lengths.max()}  mean {lengths.mean():.1f}  "
            f"total {lengths.sum()}",
            file=out,
        )
        over = "  ".join(f"> {t // 1024}k: {int((lengths > t).sum())}" for t in LENGTH_THRESHOLDS)
        print(f"long samples:   {over}", file=out)
    media = report.media_counts()
    counts = f"images {media['image']}  videos {media['video']}  audios {media['audio']}"
    print(f"media:          {counts}", file=out)
    verdict = f"{len(report.errors)} bad record(s)" if report.errors else "OK"
    print(f"result:         {verdict}", file=out)


def format_summary(tokenized: TokenizedFile) -> str:
    """The detected record format(s) of a source (formats/): `sharegpt`, or `openai 12 / sharegpt 3`
    when its records differ (`unknown` when no record was readable); `, embedded media` when its
    media are bytes inside the source."""
    formats = tokenized.formats
    if len(formats) <= 1:
        summary = next(iter(formats), "unknown")
    else:
        summary = " / ".join(f"{name} {count}" for name, count in sorted(formats.items(), key=lambda kv: -kv[1]))
    return summary + (", embedded media" if (tokenized.media.members != "").any() else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmms-data", description="Data tools of lmms-engine.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check", help="report every bad record of a dataset (exit 1 if any) and its token statistics"
    )
    check.add_argument("dataset", help="a dataset yaml, or one jsonl / json / parquet / arrow file or folder")
    which = check.add_mutually_exclusive_group()
    which.add_argument(
        "--tokenizer", help="'builtin' (default: the built-in VL processor) or a hub id / local path"
    )
    which.add_argument("--model", help="a conf/model preset name (e.g. tiny_omni): use its processor")
    check.add_argument("--num-proc", type=int, default=None, help="tokenizing processes (min(8, cpus))")
    check.add_argument(
        "--allow-path-escape",
        action="store_true",
        help="as data.allow_path_escape=true: relative media paths may climb out of data_folder",
    )
    args = parser.parse_args(argv)
    try:
        tokenizer, processor, mrope_spec = load_inputs(args.tokenizer, args.model)
        report = check_dataset(
            args.dataset, tokenizer, processor, mrope_spec, args.num_proc, args.allow_path_escape
        )
    except (ValueError, TemplateError, OSError) as error:  # DataSourceError is a ValueError
        print(f"lmms-data check: {error}", file=sys.stdout)
        return 1
    print_report(report, args.dataset)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
