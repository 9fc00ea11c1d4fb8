"""Resuming into an existing run directory with that run's own config.

`lmms-train hydra.run.dir=D trainer.resume=auto trainer.max_steps=240` continues the run in D
without repeating its command line: when D holds a run (`D/.hydra/overrides.yaml`) and a
`trainer.resume` is given, the run's own overrides come first and this command line's after them
(a key set in both takes this command line's value), so the run goes on with the model and data it
started with. A command line that changes the model or data (any override that composes to other
`model.*` / `data.*` values than the saved run's) is refused in one line before anything is built or
written. `hydra.output_subdir=null` keeps Hydra from rewriting `D/.hydra/` (the record of how the run
started); once the checkpoint has loaded, what this resume changed is appended to
`D/.hydra/resumes.yaml` (train/app.py calls record_resume).

The rewrite happens before Hydra composes (train/preflight.py). Every rank of a torchrun job
does the same (they read the same file), and relaunch_under_torchrun passes the rewritten overrides
on, which rewrite to themselves.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import OmegaConf

from lmms_engine.compat import hydra_args_parser
from lmms_engine.overrides import compose_run, is_hydra_override

SAVED_OVERRIDES = Path(".hydra") / "overrides.yaml"
RESUMES = Path(".hydra") / "resumes.yaml"
RUN_GROUPS = ("model", "data")  # what a resume may not change
# data keys that say how the data is prepared, not what it is: free to differ on resume.
PREPARATION_KEYS = ("data.cache_dir", "data.num_proc")
SHOWN_KEYS = 4


@dataclass(frozen=True)
class Resume:
    """A command line that resumes into the run directory `run_dir`."""

    run_dir: Path
    saved: list[str]  # the run's own task overrides, as it started
    new: list[Override]  # this command line's task overrides
    hydra: list[str]  # this command line's hydra.* overrides (hydra.run.dir among them)


def resume_argv(argv: list[str], config_name: str = "train") -> list[str]:
    """`argv` with the resumed run's own overrides first (see module docstring); `argv` itself when it
    does not resume into a run directory. ValueError (one line) when it changes the run's model or data."""
    args, _ = hydra_args_parser().parse_known_args(argv)
    resume = find_resume(args)
    if resume is None:
        return argv
    merged = merge_overrides(resume.saved, resume.new)
    check_same_model_and_data(resume, merged, config_name)
    flags = [arg for arg in argv if arg not in set(args.overrides)]  # --cfg job and the like
    return [*flags, *merged, *resume.hydra, "hydra.output_subdir=null"]


def find_resume(args) -> Resume | None:
    """The resume a parsed command line (Hydra's parser) asks for: `hydra.run.dir=D` naming a run directory and a non-null
    `trainer.resume`, in a single run (not -m) of the default config."""
    if args.multirun or args.config_name or args.config_path or args.config_dir:
        return None
    try:
        overrides = _parse(list(args.overrides))
    except Exception:  # a syntax error: Hydra's own message points at the character
        return None
    values = {o.key_or_group: o.value() for o in overrides if o.type is OverrideType.CHANGE and o.package is None}
    run_dir = values.get("hydra.run.dir")
    if values.get("trainer.resume") is None or run_dir is None or not (Path(run_dir) / SAVED_OVERRIDES).is_file():
        return None
    return Resume(run_dir=Path(run_dir), saved=saved_overrides(Path(run_dir)),
                  new=[o for o in overrides if not is_hydra_override(o)],
                  hydra=[o.input_line for o in overrides if is_hydra_override(o)])


def saved_overrides(run_dir: Path) -> list[str]:
    """The task overrides `run_dir`'s run started with ([] when it has none on record)."""
    path = run_dir / SAVED_OVERRIDES
    return [str(line) for line in OmegaConf.to_container(OmegaConf.load(path)) or []] if path.is_file() else []


def merge_overrides(saved: list[str], new: list[Override]) -> list[str]:
    """The saved overrides, less those this command line sets again (same key and kind), then the new ones."""
    replaced = {o.get_key_element() for o in new}
    kept = [line for line, o in zip(saved, _parse(saved)) if o.get_key_element() not in replaced]
    return [*kept, *(o.input_line for o in new)]


def check_same_model_and_data(resume: Resume, merged: list[str], config_name: str) -> None:
    """ValueError naming the overrides and keys when `merged` composes another model or data than the run's."""
    try:
        before, after = compose_run(resume.saved, config_name), compose_run(merged, config_name)
    except Exception as err:  # e.g. an option the saved run used no longer exists
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"cannot compose the config of {resume.run_dir} from {resume.run_dir / SAVED_OVERRIDES} "
                         f"and this command line: {first} (a run started with `python -m lmms_engine.launch.cli "
                         "--config FILE` resumes with that command plus hydra.run.dir and trainer.resume)") from None
    changed = [key for group in RUN_GROUPS for key in changed_keys(before[group], after[group], group)]
    if not changed:
        return
    blamed = [o.input_line for o in resume.new if _of_run_groups(o) and o.input_line not in resume.saved]
    own = " ".join(line for line, o in zip(resume.saved, _parse(resume.saved)) if _of_run_groups(o))
    shown = ", ".join(changed[:SHOWN_KEYS]) + (", ..." if len(changed) > SHOWN_KEYS else "")
    raise ValueError(
        f"resuming {resume.run_dir}: {' '.join(blamed) or 'this command line'} changes the run's model or data "
        f"({shown}); a resume keeps the model and data the run started with ({own or 'the defaults'}, from "
        f"{resume.run_dir / SAVED_OVERRIDES}): drop {'it' if len(blamed) == 1 else 'them'}, or train from its "
        f"checkpoint in a new run directory with trainer.resume={resume.run_dir} and no hydra.run.dir")


def changed_keys(before, after, prefix: str) -> list[str]:
    """Dotted keys whose (unresolved) values differ between two config nodes, preparation keys aside."""
    old, new = _flatten(OmegaConf.to_container(before), prefix), _flatten(OmegaConf.to_container(after), prefix)
    differ = [key for key in old.keys() | new.keys() if old.get(key, ...) != new.get(key, ...)]
    return sorted(key for key in differ if key not in PREPARATION_KEYS)


def record_resume(run_dir: Path, checkpoint: Path, step: int, task_overrides: list[str]) -> None:
    """Append this resume (when, from which checkpoint, and its overrides beyond the run's own) to
    `run_dir/.hydra/resumes.yaml`; nothing when `run_dir` has no `.hydra/` (a run without Hydra)."""
    if not (run_dir / ".hydra").is_dir():
        return
    saved = saved_overrides(run_dir)
    entry = {"time": datetime.datetime.now().isoformat(timespec="seconds"), "checkpoint": str(checkpoint),
             "step": step, "overrides": [o for o in task_overrides if o not in saved]}
    with open(run_dir / RESUMES, "a") as f:
        f.write(yaml.safe_dump([entry], sort_keys=False))


def _flatten(node, prefix: str) -> dict[str, object]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, object] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}"))
    return flat


def _of_run_groups(override: Override) -> bool:
    return override.key_or_group.split(".")[0] in RUN_GROUPS


def _parse(lines: list[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(lines)
