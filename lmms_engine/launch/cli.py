"""The original engine's launch form:

    torchrun --nproc_per_node=8 -m lmms_engine.launch.cli --config examples/my_run.yaml [overrides...]

The yaml is either

* a config of the original engine (top-level trainer_type / dataset_config / model_config /
  trainer_args): translated into this framework's overrides (launch/legacy.py; the mapping is in
  docs/train.md), which are printed at start; `--print-translation` prints the equivalent
  `lmms-train ...` command and exits; or
* a whole experiment of this framework merged over conf/train.yaml (as an `experiment/` option at the
  global package): it may set any group's keys, pick group options with a `defaults:` list
  (`- override /model: qwen2_5_1_5b`), and use the original engine's top-level switches
  `use_liger_kernel` / `use_rmpad`, which map to `kernels.*`; `--print-translation` prints it as
  the equivalent `lmms-train` overrides and exits.

Further Hydra overrides may follow (they win over the file's values).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from lmms_engine.dotted import flatten
from lmms_engine.launch.legacy import Translation, hydra_value, is_legacy, translate

CLI_EXPERIMENT = "_cli_config"
SEED_SWITCHES = ("use_liger_kernel", "use_rmpad")


def load_experiment(path: Path):
    """Read the yaml and move the original engine's top-level kernel switches under `kernels`."""
    node = _read(path)
    for switch in SEED_SWITCHES:
        if switch in node:
            node.setdefault("kernels", {})
            node.kernels[switch] = node.pop(switch)
    return node


def experiment_translation(path: Path) -> Translation:
    """The lmms-train overrides a framework experiment yaml amounts to: the group options of its
    `defaults` (`- override /model: tiny` -> `model=tiny`), then every key it sets, dotted."""
    node = OmegaConf.to_container(load_experiment(path))
    options = {}
    for entry in node.pop("defaults", None) or []:
        if isinstance(entry, dict):  # `_self_` and other plain entries choose no option
            options.update({key.removeprefix("override").strip().lstrip("/"): option for key, option in entry.items()})
    overrides = [f"{group}={option}" for group, option in options.items()]
    overrides += [f"{key}={hydra_value(value)}" for key, value in flatten(node).items()]
    return Translation(overrides, [], options.get("parallel", "single"))


def _read(path: Path):
    if not path.is_file():
        raise SystemExit(f"--config {path}: no such file")
    return OmegaConf.load(path)


def legacy_translation(path: Path) -> Translation | None:
    """The translation of an original-engine config (None for a framework config); exits with one
    line per key that cannot be translated."""
    node = _read(path)
    if not (OmegaConf.is_dict(node) and is_legacy(node)):  # keys only: a framework yaml may interpolate other groups
        return None
    from lmms_engine.data.cache import resolve_cache_dir  # transformers: only for an original-engine config

    try:
        return translate(OmegaConf.to_container(node, resolve=True), resolve_cache_dir(None))
    except ValueError as err:
        raise SystemExit("\n".join(f"--config {path}: {line}" for line in str(err).splitlines())) from None


def _print_translation(translation: Translation) -> None:
    print(translation.command())
    if translation.multi_process:
        print(f"# parallel={translation.parallel}: launch under torchrun (torchrun --nproc_per_node=N train.py "
              "<the overrides above>)")


def _report(path: Path, translation: Translation) -> None:
    for line in translation.warnings:
        print(f"WARNING --config {path}: {line}", file=sys.stderr)
    print(f"--config {path} (the original engine's schema) runs as: {translation.command()}", file=sys.stderr)


def join_one_process_group() -> None:
    """Without torchrun, a multi-process strategy (the original config's fsdp2 / deepspeed) runs as
    a job of one rank: the rendezvous variables torchrun would set, on a free local port."""
    from lmms_engine.parallel import dist as pdist

    if pdist.under_launcher() or "RANK" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                      LOCAL_WORLD_SIZE="1")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path,
                        help="an original-engine config, or an experiment yaml merged over conf/train.yaml")
    parser.add_argument("--print-translation", action="store_true",
                        help="print the lmms-train command the config amounts to, and exit")
    args, overrides = parser.parse_known_args(argv)
    translation = legacy_translation(args.config)
    if args.print_translation:  # a framework yaml too: the same run as command-line overrides
        _print_translation(translation or experiment_translation(args.config))
        return
    if translation is None:
        ConfigStore.instance().store(group="experiment", name=CLI_EXPERIMENT, node=load_experiment(args.config),
                                     package="_global_")
        hydra_args = [f"experiment={CLI_EXPERIMENT}", *overrides]
    else:
        if os.environ.get("RANK", "0") == "0":
            _report(args.config, translation)
        if translation.multi_process and not any(o.startswith("parallel=") for o in overrides):
            join_one_process_group()
        hydra_args = [*translation.overrides, *overrides]
    from lmms_engine.train.preflight import prepared_argv_or_exit

    sys.argv = [sys.argv[0], *prepared_argv_or_exit(hydra_args)]  # before torch is imported: mistakes answer at once
    from lmms_engine.train.app import main as app_main

    app_main()


if __name__ == "__main__":
    main()
