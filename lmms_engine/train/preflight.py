"""What the entry points do with the command line before Hydra composes the run, and before torch,
transformers and DeepSpeed are imported (~15 s on a small machine), so a mistake answers in seconds:

1. A resume into an existing run directory takes that run's own overrides (train/resume_args.py).
2. A key or group option that does not exist gets the closest valid names (overrides.py).
3. The composed config is checked: types, ranges, options, data paths (config.check_config).
A mistake exits with status 1 and one line on stderr, before anything is built or written.
"""

from __future__ import annotations

import os
import sys

from hydra.errors import HydraException

from lmms_engine.compat import hydra_args_parser
from lmms_engine.config import check_config
from lmms_engine.config_checks import check_paths
from lmms_engine.overrides import check_cli_overrides, compose_run, is_hydra_override, parse_overrides
from lmms_engine.train.resolvers import register_resolvers
from lmms_engine.train.resume_args import resume_argv

# Hydra flags after which nothing is trained (the command prints, or runs jobs that check themselves).
NOT_A_RUN = ("multirun", "cfg", "help", "hydra_help", "info", "shell_completion", "version",
             "config_name", "config_path", "config_dir", "experimental_rerun")


def prepare_argv(argv: list[str], config_name: str = "train") -> list[str]:
    """The command line Hydra is to compose (the resumed run's overrides added); ValueError on a mistake."""
    argv = resume_argv(argv, config_name)
    check_cli_overrides(argv, config_name)
    check_run_config(argv, config_name)
    return argv


def check_run_config(argv: list[str], config_name: str = "train") -> None:
    """Compose the run `argv` asks for, as Hydra will, and check it (config.check_config)."""
    args, _ = hydra_args_parser().parse_known_args(argv)
    if any(getattr(args, flag, None) for flag in NOT_A_RUN):
        return
    overrides = parse_overrides(list(args.overrides))
    if overrides is None:  # a syntax error: Hydra's own message points at the character
        return
    register_resolvers()
    try:
        cfg = compose_run([o.input_line for o in overrides if not is_hydra_override(o)], config_name)
    except HydraException as err:  # what overrides.py does not name itself, in Hydra's words, one line
        raise ValueError(" ".join(str(err).split())) from None
    check_paths(check_config(cfg).groups)


def prepared_argv_or_exit(argv: list[str], config_name: str = "train") -> list[str]:
    """prepare_argv, a mistake exiting with status 1 and one line on stderr (under torchrun, from the
    first process of each node only: every process finds the same mistake)."""
    try:
        return prepare_argv(argv, config_name)
    except ValueError as err:
        if os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"ERROR    {err}", file=sys.stderr)
        raise SystemExit(1) from None
