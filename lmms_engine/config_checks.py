"""Value checks of the composed config: numeric ranges and fixed sets of options, before anything is built.

Each builder checks its own arguments too, but only when it runs: a bad `optim.schedule` would surface
after the model is built and the data tokenized, and torch's "Invalid learning rate" names no key. Here
every message names the full key (`group.key=value`) and what is allowed. The option sets are the
builders' own constants (lmms_engine/options.py), so the two checks cannot drift apart. Nothing here
imports torch unless the setting needs it (fp8, sequence parallelism): the entry point runs these
checks before the heavy imports (train/preflight.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmms_engine.options import (
    BACKENDS,
    ON_ERROR_POLICIES,
    OVERLONG_POLICIES,
    PRECISIONS,
    ZERO_STAGES,
    check_offload,
    checkpoint_every,
    encoder_checkpointing,
)

# (low, high, low_inclusive, high_inclusive); None = unbounded on that side.
Range = tuple[float | None, float | None, bool, bool]
POSITIVE: Range = (0, None, False, False)
NON_NEGATIVE: Range = (0, None, True, False)
AT_LEAST_ONE: Range = (1, None, True, False)
FRACTION: Range = (0, 1, True, True)

TRAINER_RANGES: dict[str, Range] = {
    "max_steps": AT_LEAST_ONE, "epochs": AT_LEAST_ONE, "seed": NON_NEGATIVE, "grad_accum": AT_LEAST_ONE, "save_every": NON_NEGATIVE,
    "log_every": AT_LEAST_ONE, "data_workers": NON_NEGATIVE, "max_bad_steps": NON_NEGATIVE, "keep_last": AT_LEAST_ONE,
}
OPTIM_RANGES: dict[str, Range] = {
    "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "eps": POSITIVE, "warmup_steps": NON_NEGATIVE,
    "warmup_ratio": (0, 1, True, False),
    "min_lr_ratio": FRACTION, "decay_ratio": FRACTION,
}
# Keys of the _target_ groups: checked where the chosen option has them (options differ in keys).
TARGET_RANGES: dict[str, dict[str, Range]] = {
    "data": {
        "packing_length": AT_LEAST_ONE, "micro_batch_size": AT_LEAST_ONE, "num_proc": AT_LEAST_ONE,
        "stream_window": AT_LEAST_ONE, "image_min_pixels": AT_LEAST_ONE, "image_max_pixels": AT_LEAST_ONE,
        "video_fps": POSITIVE, "video_min_frames": AT_LEAST_ONE, "video_max_frames": AT_LEAST_ONE,
        "video_max_pixels": AT_LEAST_ONE, "audio_max_seconds": POSITIVE,
    },
    "parallel": {"param_persistence_threshold": NON_NEGATIVE, "sp_degree": AT_LEAST_ONE},
    "logger": {"log_every": AT_LEAST_ONE},
}
TARGET_OPTIONS: dict[str, dict[str, tuple]] = {
    "data": {"on_error": ON_ERROR_POLICIES, "overlong": OVERLONG_POLICIES},
    "kernels": {"attn_backend": ("auto", *BACKENDS)},
    "parallel": {"precision": PRECISIONS, "stage": ZERO_STAGES},
}
# Settings whose builder-side parser already raises a message naming the key: run it early.
TARGET_PARSERS: dict[str, dict[str, Callable]] = {
    "parallel": {"activation_checkpointing": checkpoint_every,
                 "encoder_checkpointing": lambda setting: encoder_checkpointing(setting, 0)},
}


def check_values(trainer, optim, groups: dict[str, DictConfig]) -> None:
    """Raise ValueError naming the first key whose value is out of range or not a valid option."""
    for key, bounds in TRAINER_RANGES.items():
        check_range(f"trainer.{key}", getattr(trainer, key), bounds)
    for key, bounds in OPTIM_RANGES.items():
        check_range(f"optim.{key}", getattr(optim, key), bounds)
    _check_betas(optim.betas)
    for component, lr in (optim.component_lr or {}).items():
        check_range(f"optim.component_lr.{component}", lr, POSITIVE)
    for group, node in groups.items():
        _check_target_group(group, node)
    _check_frame_bounds(groups["data"])
    _check_fp8(groups["kernels"], groups["parallel"])
    _check_sequence_parallel(groups)
    _check_offload(groups["parallel"])


def check_family(groups: dict[str, DictConfig]) -> None:
    """What the model family's entry says about this run (features it does not support, bundled demo
    data with media it does not take). Imports the family's module: run after the torch-free checks."""
    _check_family_supports(groups)
    _check_demo_data_fits_model(groups["model"], groups["data"])


def check_range(key: str, value, bounds: Range) -> None:
    """`value` (None = unset, always fine) within `bounds`; the message names `key`."""
    if value is None or isinstance(value, bool):
        return
    low, high, low_inclusive, high_inclusive = bounds
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        raise ValueError(f"{key}={value!r} is out of range; it must be {_describe(bounds)}")


def check_option(key: str, value, options: tuple) -> None:
    if value not in options:
        raise ValueError(f"{key}={value!r} is not a valid option; choose one of {', '.join(map(str, options))}")


def _describe(bounds: Range) -> str:
    low, high, low_inclusive, high_inclusive = bounds
    if high is None:
        return f"{'>=' if low_inclusive else '>'} {low:g}"
    return f"in {'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"


def _check_betas(betas: list[float]) -> None:
    if len(betas) != 2:
        raise ValueError(f"optim.betas={list(betas)} must hold two numbers, e.g. [0.9, 0.95]")
    for i, beta in enumerate(betas):
        check_range(f"optim.betas[{i}]", beta, (0, 1, True, False))


def _check_target_group(group: str, node: DictConfig) -> None:
    for key, bounds in TARGET_RANGES.get(group, {}).items():
        if key in node:
            value = node[key]
            if value is not None and not isinstance(value, (int, float)):
                raise ValueError(f"{group}.{key}={value!r} must be a number ({_describe(bounds)})")
            check_range(f"{group}.{key}", value, bounds)
    for key, options in TARGET_OPTIONS.get(group, {}).items():
        if key in node:
            check_option(f"{group}.{key}", node[key], options)
    for key, parse in TARGET_PARSERS.get(group, {}).items():
        if key in node:
            parse(node[key])


def _check_fp8(kernels: DictConfig, parallel: DictConfig) -> None:
    """kernels.fp8: a boolean; true needs torchao, an FP8-capable GPU and a strategy torchao's
    Float8Linear composes with (single / ddp / fsdp2, not DeepSpeed's parameter partitioning)."""
    fp8 = kernels.get("fp8", False)
    if not isinstance(fp8, bool):
        raise ValueError(f"kernels.fp8={fp8!r} must be true or false")
    if not fp8:
        return
    if "deepspeed" in str(parallel.get("_target_", "")):
        raise ValueError(f"kernels.fp8=true runs with parallel=single, ddp or fsdp2, not {parallel._target_}: "
                         "pick one of those or set kernels.fp8=false")
    from lmms_engine.kernels.fp8 import check_fp8_supported  # torch: only for fp8 runs

    check_fp8_supported()


def _check_frame_bounds(data: DictConfig) -> None:
    low, high = data.get("video_min_frames"), data.get("video_max_frames")
    if low is not None and high is not None and low > high:
        raise ValueError(f"data.video_min_frames={low} is larger than data.video_max_frames={high}")

def _check_offload(parallel: DictConfig) -> None:
    """parallel.offload_activations=true needs activation checkpointing (it offloads what that keeps)."""
    if "offload_activations" in parallel:
        check_offload(parallel.offload_activations, checkpoint_every(parallel.get("activation_checkpointing", False)))

# The bundled demo data options (conf/data/<option>.yaml reads lmms_engine/data/demo/<option>.yaml) and their media.
DEMO_DIR = Path(__file__).resolve().parent / "data" / "demo"
DEMO_MEDIA = {"demo": frozenset(), "demo_vl": frozenset({"image", "video"}), "demo_audio": frozenset({"audio"}),
              "demo_omni": frozenset({"image", "video", "audio"})}


def _check_demo_data_fits_model(model: DictConfig, data: DictConfig) -> None:
    """Bundled demo data with media the model does not take (`model=tiny` with the default demo_vl):
    one line naming the demo option that fits, before the data is built and a record refuses."""
    from lmms_engine.models.registry import family_of  # the family's module: torch, transformers

    family = family_of(str(model.get("_target_")))
    takes = family.media_kinds if family is not None else None
    option = _demo_option(data)
    if takes is None or option is None or DEMO_MEDIA[option] <= takes:
        return
    fit = next(name for name, kinds in DEMO_MEDIA.items() if kinds == takes)
    takes_words = f"text and {_media_words(takes)}" if takes else "text only"
    raise ValueError(f"model={model.name} takes {takes_words} but data={option} has {_media_words(DEMO_MEDIA[option])}; "
                     f"use data={fit}")


def _demo_option(data: DictConfig) -> str | None:
    """The bundled demo option whose dataset yaml `data.dataset_path` is, else None."""
    if "dataset_path" not in data or OmegaConf.is_missing(data, "dataset_path"):
        return None
    path = Path(str(data.dataset_path)).resolve()
    return next((name for name in DEMO_MEDIA if path == DEMO_DIR / f"{name}.yaml"), None)


def _media_words(kinds: frozenset[str]) -> str:
    return "/".join(word for kind, word in (("image", "images/video"), ("audio", "audio")) if kind in kinds)


# Run features a model family's entry may refuse (models/family.py, Supports): the key that turns
# each on, and its value that turns it off.
FAMILY_FEATURES = {"sequence_parallel": ("parallel", "sp_degree", 1), "fp8": ("kernels", "fp8", False),
                   "compile": ("parallel", "compile", False)}


def _check_family_supports(groups: dict[str, DictConfig]) -> None:
    """A feature turned on that the model's family does not support: one line naming both."""
    model = groups["model"]
    from lmms_engine.models.registry import family_of  # the family's module: torch, transformers

    family = family_of(str(model.get("_target_")))
    if family is None:  # model=auto (the family is known once its checkpoint is read) or a builder without an entry
        return
    for feature, (group, key, off) in FAMILY_FEATURES.items():
        value = groups[group].get(key, off)
        if value not in (off, None) and not getattr(family.supports, feature):
            raise ValueError(f"{group}.{key}={value} is not supported for model._target_={model._target_} yet "
                             f"({family.supports.note}); use {group}.{key}={str(off).lower()}")


def _check_sequence_parallel(groups: dict[str, DictConfig]) -> None:
    """parallel.sp_degree > 1: padding-free batches, and heads divisible by it where the model config
    states them (a pretrained model's heads are checked again when it is built: kernels/patcher.py)."""
    degree = groups["parallel"].get("sp_degree") or 1
    if degree == 1:
        return
    data, kernels = groups["data"], groups["kernels"]
    if not data.get("packing") and not kernels.get("use_rmpad"):
        raise ValueError(f"parallel.sp_degree={degree} needs padding-free batches: set data.packing=true "
                         "or kernels=rmpad (kernels.use_rmpad=true)")
    config = groups["model"].get("config") or {}
    text = config.get("text_config") or config
    if text.get("num_attention_heads") is not None:
        from lmms_engine.parallel.sequence import check_heads  # torch: only for sequence-parallel runs

        check_heads(degree, text["num_attention_heads"], text.get("num_key_value_heads") or text["num_attention_heads"])


DATA_PATH_KEYS = ("dataset_path", "eval_path")


def check_paths(groups: dict[str, DictConfig]) -> None:
    """The data files the config names exist (a dataset yaml's sources too), and the checkpoints the
    model names can be found (models/locate.py): a wrong path answers before anything is built, in one
    line naming the key."""
    from lmms_engine.data.sources import resolve_sources  # light: yaml and the error types
    from lmms_engine.models.locate import check_model_sources

    check_model_sources(groups["model"])
    data = groups["data"]
    for key in DATA_PATH_KEYS:
        path = data.get(key)
        if path is None:
            continue
        if not Path(path).exists():
            raise ValueError(f"data.{key}={path!r}: no such file or folder (a relative path starts at the working "
                             f"directory, {Path.cwd()}); give a dataset yaml, or a jsonl / json / arrow / parquet "
                             "file or folder")
        resolve_sources(path)  # a dataset yaml's own sources, named with the yaml's line
