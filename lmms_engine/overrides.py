"""Command-line overrides that name no existing key, reported as the framework's one line.

Hydra refuses `trainer.max_stpes=3` with "Key 'max_stpes' is not in struct ... To append to your
config use +trainer.max_stpes=3", which suggests the wrong fix (the key would then be refused by
`validate` anyway). Before Hydra composes the run, `check_cli_overrides` composes the config with the
same group choices and names the unknown key with the closest valid ones ("did you mean ...?").
"""

from __future__ import annotations

import difflib
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf

from lmms_engine.compat import hydra_args_parser
from lmms_engine.config import TOP_LEVEL_KEYS

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
MAX_SUGGESTIONS = 3
# Keys that only some options of a group have: what to choose instead of adding them with `+`.
OPTION_KEYS = {"parallel.sp_degree": ("parallel=fsdp2", "sequence parallelism shards the model with FSDP2"),
               "parallel.offload_activations": ("parallel=fsdp2 (or single / ddp)",
                                                "DeepSpeed's activation checkpointing is not this one and keeps layer inputs on the GPU"),
               "logger.wandb": ("logger=wandb", "logger=default does not log to Weights & Biases")}


def check_cli_overrides(argv: list[str], config_name: str = "train") -> None:
    """Raise ValueError naming the first group choice (`model=tiny_qwen25`) that is no option of its
    group, or the first plain override (`key=value`, no `+`) whose key the composed config lacks.
    Syntax errors are left to Hydra's own message (it points at the character)."""
    overrides = parse_overrides(_positional_overrides(argv))
    if not overrides:
        return
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        groups = set(GlobalHydra.instance().config_loader().list_groups(""))
        plain = [o for o in overrides if o.type is OverrideType.CHANGE and o.package is None and not is_hydra_override(o)]
        choices = [o for o in plain if "." not in o.key_or_group and o.key_or_group in groups]
        for choice in choices:
            unknown_option_error(choice, GlobalHydra.instance().config_loader().get_group_options(choice.key_or_group))
        swept = {o.key_or_group for o in choices if o.is_sweep_override()}
        # Keys under a swept group choice depend on the job: each job's composition checks them.
        candidates = [o for o in plain if ("." in o.key_or_group or o.key_or_group not in groups)
                      and o.key_or_group.partition(".")[0] not in swept]
        if not candidates:
            return
        try:
            cfg = compose(config_name=config_name, overrides=[o.input_line for o in choices if o.key_or_group not in swept])
        except Exception:  # anything else Hydra refuses: its own message when it runs
            return
    for override in candidates:
        unknown_key_error(cfg, override.key_or_group)


def unknown_option_error(choice: Override, options: list[str]) -> None:
    """Raise ValueError when a group choice (each value of a sweep) names no option of the group
    (a file of conf/<group>/), with the closest options; Hydra's own message lists the search path."""
    group = choice.key_or_group
    values = list(choice.sweep_string_iterator()) if choice.is_sweep_override() else [choice.value()]
    for value in values:
        if value is None or str(value) in options:  # `experiment=null`: no option chosen
            continue
        close = difflib.get_close_matches(str(value), options, n=MAX_SUGGESTIONS, cutoff=0.6)
        hint = f" (did you mean {' or '.join(f'{group}={name}' for name in close)}?)" if close else ""
        raise ValueError(f"unknown option {group}={value}{hint}; options of {group} (conf/{group}/): {', '.join(options)}")


def unknown_key_error(cfg: DictConfig, key: str) -> None:
    """Raise ValueError when `key` (dotted) is not in `cfg`, with the closest valid keys."""
    parent_path, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_path, throw_on_resolution_failure=False) if parent_path else cfg
    if parent_path and not isinstance(parent, DictConfig):
        if parent is None:
            unknown_key_error(cfg, parent_path)  # report the first missing level
            raise ValueError(_null_node_message(key, parent_path))
        return  # a list element or a scalar's child: Hydra's own message is precise
    if leaf in parent.keys():
        return
    if key in OPTION_KEYS:
        option, why = OPTION_KEYS[key]
        raise ValueError(f"{key} is a key of {option} only ({why}); this run's {parent_path} is "
                         f"{parent.get('_target_')}: add {option} to the command line")
    hint = _suggest(cfg, parent, parent_path, leaf)
    if not parent_path:
        raise ValueError(f"unknown top-level key(s) {key}{hint}; valid: {', '.join(TOP_LEVEL_KEYS)}")
    valid = [str(k) for k in parent.keys() if not str(k).startswith("_")]
    raise ValueError(f"unknown key {key}{hint}; valid keys of {parent_path}: {', '.join(valid)}")


def _null_node_message(key: str, node_path: str) -> str:
    """`key` under a node that is null in this run (`logger.wandb` with logger=default)."""
    if node_path in OPTION_KEYS:
        option, why = OPTION_KEYS[node_path]
        return f"{key}: {node_path} is null in this run ({why}); add {option} to the command line"
    leaf = key.rpartition(".")[2]
    return f"{key}: {node_path} is null in this run, so it has no keys to set; set it whole: {node_path}={{{leaf}:...}}"


def _suggest(cfg: DictConfig, parent: DictConfig, parent_path: str, leaf: str) -> str:
    """' (did you mean a.b?)': the closest sibling keys, else keys of the same name elsewhere
    (`use_rmpad` -> `kernels.use_rmpad`)."""
    prefix = f"{parent_path}." if parent_path else ""
    siblings = [str(k) for k in parent.keys() if not str(k).startswith("_")]
    close = [prefix + k for k in difflib.get_close_matches(leaf, siblings, n=MAX_SUGGESTIONS, cutoff=0.75)]
    if not close:
        by_leaf: dict[str, list[str]] = {}
        for path in _leaf_paths(cfg):
            by_leaf.setdefault(path.rpartition(".")[2], []).append(path)
        for name in difflib.get_close_matches(leaf, list(by_leaf), n=MAX_SUGGESTIONS, cutoff=0.85):
            close += by_leaf[name]
    return f" (did you mean {' or '.join(close[:MAX_SUGGESTIONS])}?)" if close else ""


def _leaf_paths(node: DictConfig, prefix: str = "") -> list[str]:
    paths = []
    for name in node.keys():
        path = f"{prefix}{name}"
        if str(name).startswith("_"):  # _target_ and friends are not user keys
            continue
        child = OmegaConf.select(node, str(name), throw_on_resolution_failure=False)
        if isinstance(child, DictConfig) and len(child) > 0:
            paths += _leaf_paths(child, path + ".")
        else:
            paths.append(path)
    return paths


def _positional_overrides(argv: list[str]) -> list[str]:
    """The overrides of `argv`; none when another primary config is chosen (its keys are not ours to know)."""
    # Hydra's own command-line parser (the one @hydra.main uses) separates overrides from its flags.
    args, _ = hydra_args_parser().parse_known_args(argv)
    if args.config_name or args.config_path or args.config_dir:
        return []
    return list(args.overrides)


def parse_overrides(overrides: list[str]) -> list[Override] | None:
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except Exception:  # a syntax error: Hydra's message points at the character
        return None


def is_hydra_override(override: Override) -> bool:
    return override.key_or_group == "hydra" or override.key_or_group.startswith(("hydra.", "hydra/"))


def compose_run(overrides: list[str], config_name: str = "train") -> DictConfig:
    """The run config `overrides` compose to (Hydra's compose API: no run directory, nothing resolved)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)
