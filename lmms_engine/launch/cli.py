"""The original engine's launch form:

    torchrun --nproc_per_node=8 -m lmms_engine.launch.cli --config examples/my_run.yaml [overrides...]

The yaml is a whole experiment merged over conf/train.yaml (as an `experiment/` option at the global
package): it may set any group's keys, pick group options with a `defaults:` list
(`- override /model: qwen2_5_1_5b`), and use the original engine's top-level switches
`use_liger_kernel` / `use_rmpad`, which map to `kernels.*`. Further Hydra overrides may follow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

CLI_EXPERIMENT = "_cli_config"
SEED_SWITCHES = ("use_liger_kernel", "use_rmpad")


def load_experiment(path: Path):
    """Read the yaml and move the original engine's top-level kernel switches under `kernels`."""
    if not path.is_file():
        raise SystemExit(f"--config {path}: no such file")
    node = OmegaConf.load(path)
    for switch in SEED_SWITCHES:
        if switch in node:
            node.setdefault("kernels", {})
            node.kernels[switch] = node.pop(switch)
    return node


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="experiment yaml merged over conf/train.yaml")
    args, overrides = parser.parse_known_args(argv)
    ConfigStore.instance().store(group="experiment", name=CLI_EXPERIMENT, node=load_experiment(args.config), package="_global_")
    from lmms_engine.overrides import exit_on_unknown_overrides
    from lmms_engine.train.app import main as app_main

    sys.argv = [sys.argv[0], f"experiment={CLI_EXPERIMENT}", *overrides]
    exit_on_unknown_overrides(sys.argv[1:])
    app_main()


if __name__ == "__main__":
    main()
