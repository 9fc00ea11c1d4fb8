"""Run a training config of the original lmms-engine as it is, by translating it into Hydra overrides.

The original schema has four top-level sections: `trainer_type` (fsdp2_trainer | hf_trainer),
`dataset_config`, `model_config` and `trainer_args` (mostly Hugging Face TrainingArguments names).
`translate` maps each key to its counterpart (the table is docs/train.md, "Coming from the original
engine"): the result is an ordinary override list, `lmms-train <overrides>` being the same run, which
`--print-translation` prints. A key without a counterpart gets one line: a warning where ignoring it
leaves the training as it was, an error where it would not. trainer_args are in legacy_args.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lmms_engine.launch.legacy_args import translate_trainer_args

LEGACY_SECTIONS = ("trainer_type", "dataset_config", "model_config", "trainer_args")
SEED_SWITCHES = ("use_liger_kernel", "use_rmpad")  # the seed README puts these at the top level too
TRAINER_TYPES = ("fsdp2_trainer", "hf_trainer")
MULTI_PROCESS = ("fsdp2", "ddp", "zero1", "zero2", "zero3")


class LegacyConfigError(ValueError):
    """Keys of the original schema that cannot be run as written, one line each."""


@dataclass
class Translation:
    overrides: list[str]  # Hydra overrides: group options first, then keys
    warnings: list[str]  # one line per key ignored or approximated
    parallel: str  # the parallel/ option chosen

    @property
    def multi_process(self) -> bool:
        """The strategy joins a process group (torchrun, or one emulated rank)."""
        return self.parallel in MULTI_PROCESS

    def command(self) -> str:
        return " ".join(["lmms-train", *(shlex.quote(o) for o in self.overrides)])


@dataclass
class Collector:
    """What the section translators produce: group options, keys, warnings and errors."""

    options: dict[str, str] = field(default_factory=dict)
    keys: dict[str, object] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def pick(self, group: str, option: str) -> None:
        self.options[group] = option

    def set(self, key: str, value) -> None:
        self.keys[key] = value

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{key}: {message}")

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{key}: {message}")

    def overrides(self) -> list[str]:
        """Group options, then keys group by group (top-level keys last), for a readable command."""
        options = sorted(self.options.items(), key=lambda item: GROUP_ORDER.index(item[0]))
        keys = sorted(self.keys.items(), key=lambda item: _group_rank(item[0]))
        return [f"{g}={o}" for g, o in options] + [f"{k}={hydra_value(v)}" for k, v in keys]


GROUP_ORDER = ("model", "data", "kernels", "parallel", "optim", "trainer", "logger")


def _group_rank(key: str) -> int:
    group = key.split(".")[0]
    return GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)


def is_legacy(node: dict) -> bool:
    return any(section in node for section in LEGACY_SECTIONS)


def translate(node: dict, cache_dir: Path) -> Translation:
    """The overrides that run `node` (the original engine's config, as plain data); inline dataset
    lists are written to a dataset yaml under `cache_dir`. Raises LegacyConfigError listing every
    key that has no counterpart and would change the training if ignored."""
    out = Collector()
    unknown = sorted(set(node) - set(LEGACY_SECTIONS) - set(SEED_SWITCHES))
    for key in unknown:
        out.error(key, f"not a key of the original schema ({', '.join(LEGACY_SECTIONS)}); mixing the framework's own "
                       "keys in is not supported: move them to command-line overrides")
    args = {**{k: node[k] for k in SEED_SWITCHES if k in node}, **_section(out, node, "trainer_args")}
    dataset = _section(out, node, "dataset_config")
    model = _section(out, node, "model_config")
    parallel = translate_strategy(out, node.get("trainer_type"), args)
    translate_model(out, model, dataset.get("processor_config") or {})
    translate_kernels(out, model.get("attn_implementation"), args)
    translate_data(out, dataset, cache_dir)
    translate_trainer_args(out, args, parallel=parallel, packing=bool(dataset.get("packing", False)))
    if out.errors:
        raise LegacyConfigError("\n".join(out.errors))
    return Translation(out.overrides(), out.warnings, parallel)


def _section(out: Collector, node: dict, name: str) -> dict:
    value = node.get(name)
    if not isinstance(value, dict):
        out.error(name, f"missing or not a mapping (got {value!r}); the original schema needs all of "
                        f"{', '.join(LEGACY_SECTIONS)}")
        return {}
    return value


# ---------------------------------------------------------------- strategy


def translate_strategy(out: Collector, trainer_type, args: dict) -> str:
    """trainer_type + trainer_args.fsdp2 / fsdp_config / deepspeed -> the parallel/ option."""
    if trainer_type not in TRAINER_TYPES:
        out.error("trainer_type", f"{trainer_type!r} is not supported; use one of {', '.join(TRAINER_TYPES)}")
        return "single"
    if trainer_type == "fsdp2_trainer" or args.get("fsdp2"):
        if args.get("deepspeed"):
            out.error("trainer_args.deepspeed", "set together with FSDP2 (fsdp2 / fsdp2_trainer); keep one")
        parallel = "fsdp2"
    elif args.get("deepspeed"):
        parallel = _deepspeed_option(out, args["deepspeed"])
    else:
        parallel = "ddp"  # what the Hugging Face Trainer does under torchrun without FSDP / DeepSpeed
    out.pick("parallel", parallel)
    _fsdp_config(out, args.get("fsdp_config") or {}, parallel)
    return parallel


FSDP_KEYS = {"reshard_after_forward": "parallel.reshard_after_forward", "cpu_offload": "parallel.cpu_offload",
             "offload_params": "parallel.cpu_offload", "activation_checkpointing": "parallel.activation_checkpointing"}


def _fsdp_config(out: Collector, fsdp_config: dict, parallel: str) -> None:
    for key, value in fsdp_config.items():
        name = f"trainer_args.fsdp_config.{key}"
        if parallel != "fsdp2":
            out.warn(name, f"ignored: the strategy is parallel={parallel}, not fsdp2")
        elif key in FSDP_KEYS:
            out.set(FSDP_KEYS[key], value)
        elif key in ("transformer_layer_cls_to_wrap", "min_num_params", "wrap_policy"):
            out.warn(name, "ignored: the FSDP units are the model family's layers (decoder layers, vision / audio blocks)")
        else:
            out.error(name, "no counterpart in parallel=fsdp2 (keys: reshard_after_forward, cpu_offload, "
                            "activation_checkpointing)")


def _deepspeed_option(out: Collector, deepspeed) -> str:
    """A DeepSpeed json (path or inline mapping) -> zero1 / zero2 / zero3 and its offload switches."""
    config = _read_deepspeed(out, deepspeed)
    zero = config.get("zero_optimization") or {}
    stage = zero.get("stage", 0)
    if stage not in (1, 2, 3):
        out.error("trainer_args.deepspeed", f"zero_optimization.stage={stage!r}; parallel=zero1|zero2|zero3 cover "
                                            "stages 1-3 (stage 0: drop deepspeed for parallel=ddp)")
        return "single"
    for part, key in (("offload_optimizer", "parallel.offload_optimizer"), ("offload_param", "parallel.offload_params")):
        device = (zero.get(part) or {}).get("device", "none")
        if device == "cpu":
            out.set(key, True)
        elif device not in ("none", None):
            out.error(f"trainer_args.deepspeed zero_optimization.{part}.device", f"{device!r}; only cpu offload is supported")
    out.warn("trainer_args.deepspeed", "only zero_optimization.stage and offload_* are read; precision, batch "
                                       "sizes, optimizer and schedule come from trainer_args")
    return f"zero{stage}"


def _read_deepspeed(out: Collector, deepspeed) -> dict:
    if isinstance(deepspeed, dict):
        return deepspeed
    try:
        return json.loads(Path(deepspeed).read_text())
    except (OSError, ValueError) as err:
        out.error("trainer_args.deepspeed", f"cannot read the DeepSpeed json {deepspeed!r}: {err}")
        return {}


# ---------------------------------------------------------------- model and kernels

MODEL_IGNORED = {"torch_dtype": "weights load as fp32 master weights; the compute dtype follows trainer_args.bf16"}


def translate_model(out: Collector, model: dict, processor: dict) -> None:
    """load_from_pretrained_path -> model=auto (the family read from its config.json)."""
    path = model.get("load_from_pretrained_path")
    if not path:
        out.error("model_config.load_from_pretrained_path", "required (a hub id or local checkpoint); random "
                                                            "init of the original's model configs has no counterpart")
        return
    out.pick("model", "auto")
    out.set("model.pretrained", str(path))
    name = processor.get("processor_name")
    if name and str(name) != str(path):
        out.set("model.processor", str(name))
    if "processor_type" in processor:
        out.warn("dataset_config.processor_config.processor_type", "ignored: the processor follows the checkpoint's "
                                                                   "model_type (model=auto)")
    for key in sorted(set(processor) - {"processor_name", "processor_type"}):
        out.error(f"dataset_config.processor_config.{key}", "no counterpart; set data.image_* / video_* keys instead")
    for key in sorted(set(model) - {"load_from_pretrained_path", "attn_implementation"}):
        if key in MODEL_IGNORED:
            out.warn(f"model_config.{key}", f"ignored: {MODEL_IGNORED[key]}")
        else:
            out.error(f"model_config.{key}", "no counterpart (model=auto builds the checkpoint as saved)")


KERNEL_OPTIONS = {(False, False): "none", (True, False): "rmpad", (False, True): "liger", (True, True): "liger_rmpad"}


def translate_kernels(out: Collector, attn_implementation, args: dict) -> None:
    """use_rmpad / use_liger_kernel -> the kernels/ option; attn_implementation -> its attention backend."""
    rmpad, liger = bool(args.get("use_rmpad", False)), bool(args.get("use_liger_kernel", False))
    out.pick("kernels", KERNEL_OPTIONS[rmpad, liger])
    if attn_implementation in (None, "flash_attention_2", "flash_attention_3"):
        backend = "auto"  # the fastest available: flash-attn if installed, else torch's varlen; logged at start
    elif attn_implementation in ("sdpa", "eager"):
        backend = "sdpa"
        if attn_implementation == "eager":
            out.warn("model_config.attn_implementation", "eager runs as sdpa (the same attention, fused)")
    else:
        out.error("model_config.attn_implementation", f"{attn_implementation!r}; use flash_attention_2, sdpa or eager")
        return
    out.set("kernels.use_rmpad", rmpad)
    out.set("kernels.use_liger_kernel", liger)
    out.set("kernels.attn_backend", backend)


# ---------------------------------------------------------------- data

DATASET_TYPES = {"vision": False, "vision_iterable": True}  # -> data.streaming
DATASET_FORMATS = ("yaml", "json", "jsonl", "arrow", "parquet")
DATA_KEYS = {"packing_length": "data.packing_length",
             "video_max_frames": "data.video_max_frames", "video_min_frames": "data.video_min_frames",
             "video_max_pixels": "data.video_max_pixels", "video_fps": "data.video_fps"}
DATA_HANDLED = {"packing", "dataset_type", "dataset_format", "datasets", "dataset_path", "processor_config", "packing_strategy",
                "filter_overlong", "video_backend", "video_sampling_strategy", "shuffle"}


def translate_data(out: Collector, dataset: dict, cache_dir: Path) -> None:
    out.pick("data", "sft")
    dataset_type = dataset.get("dataset_type", "vision")
    if dataset_type not in DATASET_TYPES:
        out.error("dataset_config.dataset_type", f"{dataset_type!r}; supported: {', '.join(DATASET_TYPES)}")
    elif DATASET_TYPES[dataset_type]:
        out.set("data.streaming", True)
    if dataset.get("dataset_format", "yaml") not in DATASET_FORMATS:
        out.error("dataset_config.dataset_format", f"{dataset['dataset_format']!r}; supported: {', '.join(DATASET_FORMATS)}")
    _dataset_path(out, dataset, cache_dir)
    out.set("data.packing", bool(dataset.get("packing", False)))  # the original's default: no packing
    for key, target in DATA_KEYS.items():
        if key in dataset:
            out.set(target, dataset[key])
    _data_policies(out, dataset)
    for key in sorted(set(dataset) - set(DATA_KEYS) - DATA_HANDLED):
        out.error(f"dataset_config.{key}", "no counterpart in data/ (see docs/train.md, data keys)")


def _dataset_path(out: Collector, dataset: dict, cache_dir: Path) -> None:
    inline, path = dataset.get("datasets"), dataset.get("dataset_path")
    if (inline is None) == (path is None):
        out.error("dataset_config", "give exactly one of `datasets:` (an inline list) and `dataset_path:`")
    elif path is not None:
        out.set("data.dataset_path", str(path))
    elif not isinstance(inline, list) or not inline:
        out.error("dataset_config.datasets", "must be a non-empty list of {path, data_folder, data_type}")
    else:
        out.set("data.dataset_path", str(write_dataset_yaml(inline, cache_dir)))


def _data_policies(out: Collector, dataset: dict) -> None:
    if "packing_strategy" in dataset:
        out.warn("dataset_config.packing_strategy", "ignored: samples are packed best-fit-decreasing (which samples "
                                                    "share a pack changes, the loss over them does not)")
    if dataset.get("filter_overlong") is False:
        out.warn("dataset_config.filter_overlong", "false: samples longer than packing_length are truncated "
                                                   "(data.overlong=truncate); they cannot be kept whole")
        out.set("data.overlong", "truncate")
    if "video_backend" in dataset:
        out.warn("dataset_config.video_backend", "ignored: video is decoded with PyAV / torchvision")
    strategy = dataset.get("video_sampling_strategy", "fps")
    if strategy != "fps":
        out.error("dataset_config.video_sampling_strategy", f"{strategy!r}; frames are sampled by fps "
                                                            "(data.video_fps within video_min/max_frames)")
    if dataset.get("shuffle") is False:
        out.warn("dataset_config.shuffle", "false is ignored: micro-batches are shuffled per epoch (by trainer.seed)")


def write_dataset_yaml(datasets: list, cache_dir: Path) -> Path:
    """An inline `datasets:` list as a dataset yaml, named by its content (every rank and every
    run of the same config gets the same file). Relative paths still resolve against the working
    directory first."""
    text = yaml.safe_dump({"datasets": datasets}, sort_keys=False)
    path = Path(cache_dir) / "legacy_datasets" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # ranks may write at once: each its own temp file
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- override values

_PLAIN = re.compile(r"[A-Za-z_/.~][\w./~-]*")
_RESERVED = {"true", "false", "null", "none", "nan", "inf"}


def hydra_value(value) -> str:
    """`value` as Hydra override syntax (strings quoted unless plainly a path or word)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
