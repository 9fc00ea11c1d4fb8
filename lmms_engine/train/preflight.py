"""What the entry points do with the command line before Hydra composes the run.

1. A resume into an existing run directory takes that run's own overrides (train/resume_args.py).
2. An override of a key that does not exist gets the closest valid keys (overrides.py).
A mistake exits with status 1 and one line on stderr, before anything is built or written.
"""

from __future__ import annotations

import sys

from lmms_engine.overrides import check_cli_overrides
from lmms_engine.train.resume_args import resume_argv


def prepare_argv(argv: list[str], config_name: str = "train") -> list[str]:
    """The command line Hydra is to compose (the resumed run's overrides added); ValueError on a mistake."""
    argv = resume_argv(argv, config_name)
    check_cli_overrides(argv, config_name)
    return argv


def prepared_argv_or_exit(argv: list[str], config_name: str = "train") -> list[str]:
    """prepare_argv, a mistake exiting with status 1 and one line on stderr."""
    try:
        return prepare_argv(argv, config_name)
    except ValueError as err:
        print(f"ERROR    {err}", file=sys.stderr)
        raise SystemExit(1) from None
