"""Typed run configuration and validation with messages that name the offending key.

Groups without a `_target_` (trainer, optim) are typed dataclasses; groups with one (model, data,
kernels, parallel, logger) are checked against the signature of the callable they name, so an unknown
key is reported before anything is built.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields, replace

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from lmms_engine.config_checks import check_family, check_option, check_values

TARGET_GROUPS = ("model", "data", "kernels", "parallel", "logger")
# Arguments the entry point passes itself (objects built from other groups), not config keys.
INJECTED = {
    "model": {"structure_only"},
    "logger": {"run_dir", "run_config", "max_steps", "start_step", "is_main"},
}

# optim.schedule options (train/schedule.py implements them; validate checks the choice first).
SCHEDULES = ("constant", "cosine", "linear", "wsd")


@dataclass
class TrainerConfig:
    max_steps: int | None = 100  # optimizer steps (null: derived from `epochs`)
    epochs: int | None = None  # passes over the data instead of max_steps (steps derived at start; train/run_length.py)
    seed: int = 0  # model init, data order, RNG
    grad_accum: int = 1  # micro-batches per optimizer step and rank
    max_grad_norm: float = 1.0  # clip the global gradient norm (<= 0: no clipping, norm still logged)
    save_every: int = 0  # checkpoint every N steps (0: only at the end)
    save_final: bool = True  # checkpoint at the last step (false: smoke tests / benchmarks of big models)
    resume: str | None = None  # null | auto (latest complete checkpoint of this run dir) | a checkpoint or run dir
    log_every: int = 1  # console / train.log line every N steps (metrics.jsonl gets every step)
    export_hf: bool = True  # write <run_dir>/hf at the end
    export_adapter: bool = False  # with optim.lora: hf/ holds the adapter alone (peft) instead of the merged model
    data_workers: int | None = None  # processes collating upcoming micro-batches (null: 4 on CUDA, 0 = in the step)
    max_bad_steps: int = 5  # consecutive non-finite (skipped) steps that stop the run (0: never stop)
    keep_last: int | None = None  # complete checkpoints kept, newest first (null: all)
    eval_every: int = 0  # eval loss every N steps, and after the last (0: only after the last); needs data.eval_*
    report: bool = True  # write <run_dir>/report.html (curves, data stats) at the end (logging/report.py)


PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSettings:
    """optim.lora: adapters built by peft (train/lora.py); every other weight is frozen. The defaults
    are conf/optim/adamw.yaml's: rank 0 = no LoRA (validate makes optim.lora None then)."""

    rank: int = 0  # adapter rank r (0: no LoRA, full fine-tuning)
    alpha: float = 32.0  # scaling = alpha / rank
    dropout: float = 0.0  # on the adapter's input (training only)
    target_modules: list[str] = field(default_factory=lambda: list(PROJECTIONS))  # nn.Linear names (last part)
    components: list[str] = field(default_factory=lambda: ["lm"])  # where adapters go (lm = the decoder)


@dataclass
class OptimConfig:
    lr: float = 2e-4  # peak learning rate
    weight_decay: float = 0.0  # on matrices only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    schedule: str = "cosine"  # constant | cosine | wsd
    warmup_steps: int | None = 0  # linear warmup from 0 (null: from warmup_ratio)
    warmup_ratio: float | None = None  # warmup over this fraction of the run's steps instead
    min_lr_ratio: float = 0.1  # floor of cosine / wsd decay, as a fraction of lr
    decay_ratio: float = 0.2  # wsd: the last fraction of steps that decays
    freeze: list[str] = field(default_factory=list)  # components not trained, e.g. [vision] (model-specific; lm = the rest)
    # peak lr per component, e.g. {vision: 2e-6}; null entries (the yaml's defaults) and others use lr
    component_lr: dict[str, float | None] | None = None
    lora: LoraSettings | None = None  # None (rank 0 or null): full fine-tuning; rank >= 1: LoRA adapters only


@dataclass
class RunConfig:
    trainer: TrainerConfig
    optim: OptimConfig
    groups: dict[str, DictConfig]  # the _target_ groups, checked but not yet instantiated
    name: str


def validate(cfg: DictConfig) -> RunConfig:
    """Check the composed config; raise ValueError naming the key and the valid choices."""
    rc = _check_keys_and_types(cfg)
    for name, group in rc.groups.items():
        _check_target_keys(name, group)  # imports each builder (torch, transformers)
    _check_values(rc)
    check_family(rc.groups)  # the family's entry: imports its module, so not in check_config
    return rc


def check_config(cfg: DictConfig) -> RunConfig:
    """validate's checks that need no builder imported (keys, types, ranges, options): the entry point
    runs them before torch and transformers are imported (train/preflight.py)."""
    rc = _check_keys_and_types(cfg)
    _check_values(rc)
    return rc


def _check_keys_and_types(cfg: DictConfig) -> RunConfig:
    missing = missing_keys(cfg)
    if missing:
        raise ValueError(f"{', '.join(missing)} must be set (the chosen option leaves it ???): add "
                         f"{' '.join(f'{key}=...' for key in missing)} to the command line")
    _check_top_level(cfg)
    trainer = _typed(cfg, "trainer", TrainerConfig)
    optim = _typed_optim(cfg)
    _check_run_length(trainer, optim)
    _check_eval(trainer, cfg.data)
    _check_lora(optim.lora, trainer)
    return RunConfig(trainer=trainer, optim=optim, groups={name: cfg[name] for name in TARGET_GROUPS}, name=cfg.name)


def _check_values(rc: RunConfig) -> None:
    check_option("optim.schedule", rc.optim.schedule, SCHEDULES)
    check_values(rc.trainer, rc.optim, rc.groups)  # ranges and options, before anything is built


def missing_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys left `???` (interpolations are not resolved: OmegaConf.missing_keys resolves them
    and fails on `name: ${path_name:${.pretrained}}` before naming the key)."""
    found = []
    for key in node.keys():
        if OmegaConf.is_missing(node, key):
            found.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(node, key) and isinstance(node[key], DictConfig):
            found += missing_keys(node[key], f"{prefix}{key}.")
    return found


TOP_LEVEL_KEYS = ("name", "output_root", "nproc_per_node", "trainer", "optim", *TARGET_GROUPS)


def _check_top_level(cfg: DictConfig) -> None:
    unknown = sorted(set(cfg.keys()) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ValueError(f"unknown top-level key(s) {', '.join(unknown)}; valid: {', '.join(TOP_LEVEL_KEYS)}")


def _typed(cfg: DictConfig, group: str, schema: type):
    valid = [f.name for f in fields(schema)]
    unknown = sorted(set(cfg[group].keys()) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(f'{group}.{k}' for k in unknown)}; valid keys of {group}: {', '.join(valid)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg[group])
    except Exception as err:  # omegaconf's ValidationError names the key and the expected type
        raise ValueError(f"invalid value in {group}: {err}") from None
    return OmegaConf.to_object(merged)


def _typed_optim(cfg: DictConfig) -> OptimConfig:
    """optim as the code uses it: component_lr without its null (unset) entries, None when none is set;
    lora None when off (rank 0, the default node of conf/optim/adamw.yaml, or null)."""
    optim = _typed(cfg, "optim", OptimConfig)
    component_lr = {k: v for k, v in (optim.component_lr or {}).items() if v is not None}
    return replace(optim, component_lr=component_lr or None, lora=_lora_or_off(optim.lora))


def _lora_or_off(lora: LoraSettings | None) -> LoraSettings | None:
    if lora is None or lora.rank != 0:
        return lora
    off = LoraSettings()
    changed = [f"optim.lora.{f.name}={getattr(lora, f.name)}" for f in fields(LoraSettings)
               if getattr(lora, f.name) != getattr(off, f.name)]
    if changed:
        raise ValueError(f"{', '.join(changed)} set but optim.lora.rank=0 (LoRA off); set optim.lora.rank=16 "
                         "(or another rank >= 1) to train LoRA adapters")
    return None


def _check_run_length(trainer: TrainerConfig, optim: OptimConfig) -> None:
    """Exactly one of max_steps / epochs, and of warmup_steps / warmup_ratio (the defaults give way
    to the alternative through the `unless` resolver, so setting the other key alone is enough).
    Their ranges are checked with the other values (config_checks.py)."""
    _check_one_of("trainer", max_steps=trainer.max_steps, epochs=trainer.epochs)
    _check_one_of("optim", warmup_steps=optim.warmup_steps, warmup_ratio=optim.warmup_ratio)


def _check_one_of(group: str, **values) -> None:
    (a, va), (b, vb) = values.items()
    if va is not None and vb is not None:
        raise ValueError(f"{group}.{a}={va} and {group}.{b}={vb} are alternatives; set one and pass {group}.{a}=null "
                         f"or {group}.{b}=null")
    if va is None and vb is None:
        raise ValueError(f"{group}.{a} and {group}.{b} are both null; set one of them")


def _check_eval(trainer: TrainerConfig, data: DictConfig) -> None:
    """Eval settings that can be judged before anything is built (the data builder checks the rest)."""
    eval_path, eval_fraction = data.get("eval_path"), data.get("eval_fraction") or 0.0
    if trainer.eval_every < 0:
        raise ValueError(f"trainer.eval_every must be >= 0 (0: only after the last step), got {trainer.eval_every}")
    if trainer.eval_every and eval_path is None and not eval_fraction:
        raise ValueError(f"trainer.eval_every={trainer.eval_every} but there is no eval data: set data.eval_path=FILE "
                         "(a file or dataset yaml) or data.eval_fraction=0.05 (held-out training records)")
    if eval_path is not None and eval_fraction:
        raise ValueError(f"data.eval_path={eval_path!r} and data.eval_fraction={eval_fraction} are both set; "
                         "use one: a separate eval file, or held-out training records")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"data.eval_fraction must be in [0, 1) (a fraction of the training records), got {eval_fraction}")


def _check_lora(lora: LoraSettings | None, trainer: TrainerConfig) -> None:
    if lora is None:
        if trainer.export_adapter:
            raise ValueError("trainer.export_adapter=true needs LoRA: set optim.lora.rank=16 (or drop export_adapter)")
        return
    if lora.rank < 1:
        raise ValueError(f"optim.lora.rank must be >= 1 (0: no LoRA), got {lora.rank}")
    if not 0.0 <= lora.dropout < 1.0:
        raise ValueError(f"optim.lora.dropout must be in [0, 1), got {lora.dropout}")
    if not lora.target_modules or not lora.components:
        raise ValueError("optim.lora.target_modules and optim.lora.components must not be empty, e.g. "
                         f"target_modules=[{','.join(PROJECTIONS)}] components=[lm]")


def _check_target_keys(group: str, node: DictConfig) -> None:
    if "_target_" not in node:
        raise ValueError(f"config group {group!r} has no _target_; every {group}/ option must name what builds it")
    try:
        target = get_method(node._target_)
    except Exception as err:
        raise ValueError(f"{group}._target_={node._target_!r} cannot be imported: {err}") from None
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    keys = {k for k in node.keys() if not str(k).startswith("_")}
    valid = set(params) - INJECTED.get(group, set())
    unknown = sorted(keys - valid)
    if group == "parallel" and "sp_degree" in unknown:
        raise ValueError(f"parallel.sp_degree={node.sp_degree}: sequence parallelism runs with parallel=fsdp2 only, "
                         f"not {node._target_}; use parallel=fsdp2 parallel.sp_degree={node.sp_degree}")
    if group == "parallel" and "offload_activations" in unknown:
        raise ValueError(f"parallel.offload_activations={node.offload_activations}: activation offload runs with "
                         f"parallel=single, ddp or fsdp2, not {node._target_} (DeepSpeed's own activation "
                         "checkpointing is not used here); use parallel=fsdp2 or drop the key")
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(f'{group}.{k}' for k in unknown)} for {node._target_}; "
            f"valid keys: {', '.join(sorted(valid))}"
        )
