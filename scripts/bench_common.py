"""What the training benchmarks share (bench_train.py, bench_vl.py, bench_audio.py): the model
preset and its family's entry (asked of the registry, by the preset's `_target_`), the timed loop
over the framework's own training step, the throughput figures made from it, and the facts about
the device and the software a report records.

Timing: every step runs `lmms_engine.train.loop.train_step` on a `StepContext` (module, optimizer,
strategy, collate, FLOPs: no checkpoints, sinks or data position); the first `warmup_steps` are not timed;
the device is synchronised before and after each timed step. Peak memory is the accelerator's
`max_memory_allocated` over the steps (on CPU, the process's peak resident memory so far).
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from omegaconf import DictConfig, OmegaConf

from lmms_engine import compat
from lmms_engine.models.family import ModelFamily
from lmms_engine.models.registry import default_family, family_of
from lmms_engine.train.loop import StepContext, peak_memory_gb, reset_peak_memory, train_step

PRESETS = Path(__file__).resolve().parents[1] / "conf" / "model"


def load_preset(name: str, media_kinds: frozenset[str]) -> tuple[DictConfig, ModelFamily]:
    """conf/model/<name>.yaml and its family's entry, which must take `media_kinds` besides text."""
    model_cfg = OmegaConf.load(PRESETS / f"{name}.yaml")
    family = family_of(model_cfg._target_)
    if family is None or family.media_kinds != media_kinds:
        takes = ", ".join(sorted(media_kinds)) or "text only"
        raise ValueError(f"--model {name}: its _target_ {model_cfg._target_} is not a registered model family "
                         f"that takes {takes} (models/registry.py)")
    return model_cfg, family


def default_preset(media_kinds: frozenset[str], tiny: bool = False) -> str:
    """The preset a benchmark measures when none is named: the bench preset (tiny: the CPU-sized
    one) of the first registered family that takes `media_kinds`."""
    family = default_family(media_kinds)
    return family.presets[0] if tiny else family.bench_preset


def stock_attention(bundle) -> None:
    """transformers' defaults, as a plain Hugging Face loop runs: sdpa in the decoder and in every encoder."""
    bundle.decoder().set_attn_implementation("sdpa")
    for encoder in bundle.encoders:
        encoder.module(bundle.model).set_attn_implementation("sdpa")


@dataclass
class MeasuredSteps:
    """Per timed step: wall seconds, real tokens and training FLOPs (global, all ranks); the loss of
    every step (warm-up included); peak memory over all steps."""

    seconds: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    peak_mem_gb: float = 0.0
    warmup_seconds: list[float] = field(default_factory=list)  # the untimed steps (compile happens there)
    graphs: list[int] = field(default_factory=list)  # dynamo graphs compiled so far, after each step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The card's name on CUDA (what models/flops.py's peak table is keyed on), else the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def timed_steps(ctx: StepContext, steps: list[list[list[int]]], warmup_steps: int, device: torch.device) -> MeasuredSteps:
    """One train_step per entry of `steps` (its micro-batches); steps from `warmup_steps` on are timed."""
    if len(steps) <= warmup_steps:
        raise ValueError(f"{len(steps)} steps with {warmup_steps} warm-up steps leave none to time; "
                         "raise --steps or lower --warmup")
    measured = MeasuredSteps()
    reset_peak_memory(device)
    for i, batches in enumerate(steps):
        synchronize(device)
        start = time.perf_counter()
        stats = train_step(ctx, batches)
        synchronize(device)
        if i >= warmup_steps:
            measured.seconds.append(time.perf_counter() - start)
            measured.tokens.append(stats["tokens"])
            measured.flops.append(stats["flops"])
        else:
            measured.warmup_seconds.append(time.perf_counter() - start)
        measured.losses.append(stats["loss"])
        measured.graphs.append(compat.dynamo_counters()["stats"]["unique_graphs"])
    measured.peak_mem_gb = peak_memory_gb(device)
    return measured


def throughput(measured: MeasuredSteps, world_size: int, peak: float | None) -> dict:
    """The report's figures. peak: the device's dense bf16 FLOP/s (None: MFU is reported as null)."""
    seconds = sum(measured.seconds)
    tokens = sum(measured.tokens)
    return {
        "tokens_per_s": tokens / seconds,
        "tokens_per_s_per_gpu": tokens / seconds / world_size,
        "step_s": seconds / len(measured.seconds),
        "mfu": sum(measured.flops) / seconds / peak / world_size if peak else None,
        "tokens_per_step": tokens / len(measured.tokens),
        "peak_mem_gb": measured.peak_mem_gb,
        "loss_first": measured.losses[0],
        "loss_last": measured.losses[-1],
        "warmup_s": [round(t, 2) for t in measured.warmup_seconds],  # torch.compile time shows here
        "step_seconds": [round(t, 3) for t in measured.seconds],  # an outlier: a compile / JIT in a timed step
        "graphs_after_each_step": measured.graphs,  # growing after warm-up: recompiles in the timed steps
    }


def environment(device: torch.device | None = None) -> dict:
    """Card and software versions (device None: the current CUDA device)."""
    import transformers

    try:
        import liger_kernel

        liger_version = liger_kernel.__version__ if hasattr(liger_kernel, "__version__") else "installed"
    except ImportError:
        liger_version = None
    return {
        "card": device_name(device or torch.device("cuda")), "torch": torch.__version__,
        "transformers": transformers.__version__, "liger_kernel": liger_version, "torchao": _torchao_version(),
        "python": platform.python_version(),
    }


def _torchao_version() -> str | None:
    """torchao's version if installed (kernels.fp8), read from the package metadata (no import)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchao")
    except PackageNotFoundError:
        return None


def with_ratios(results: list[dict]) -> list[dict]:
    base = results[0]
    if "error" in base:
        return results
    for r in results:
        if "error" not in r:
            r["speedup_vs_baseline"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["mem_vs_baseline"] = r["peak_mem_gb"] / base["peak_mem_gb"]
    return results


def markdown_table(report: dict) -> str:
    lines = [f"{report['model']} on {report['card']}, {report['tokens_per_step']} tokens per pack",
             "| config | GPUs | tokens/s | tokens/s/GPU | MFU | peak GB | x baseline tok/s | x baseline mem |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['error'][:60]} | | | | | | |")
            continue
        lines.append(f"| {r['config']} | {r['world_size']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_gpu']:,.0f} | "
                     f"{100 * r['mfu']:.1f}% | {r['peak_mem_gb']:.1f} | "
                     f"{r.get('speedup_vs_baseline', 1):.2f} | {r.get('mem_vs_baseline', 1):.2f} |")
    return "\n".join(lines)
