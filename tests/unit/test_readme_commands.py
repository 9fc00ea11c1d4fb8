"""README.md's fenced commands run as written on a fresh clone after `uv sync`: every `torchrun` /
`python` / `pytest` / `lmms-*` line goes through `uv run` (or follows an activated `.venv`), the set-up
says how to get `uv`, and every training command's overrides compose and validate."""

from __future__ import annotations

import re
import shlex

import pytest

from lmms_engine.config import validate
from lmms_engine.overrides import check_cli_overrides
from tests.conftest import REPO, compose_config

README = REPO / "README.md"
ENV_TOOLS = ("torchrun", "python", "python3", "pytest", "lmms-train", "lmms-data", "lmms-report", "deepspeed", "accelerate")
ACTIVATE = re.compile(r"^(source|\.) \.venv/bin/activate\b")


def fenced_commands(text: str) -> list[str]:
    """Shell commands of the ```bash / ```sh / ``` blocks: continuation lines joined, comments dropped."""
    commands, block, shell = [], None, False
    for line in text.splitlines():
        if line.startswith("```"):
            if block is None:
                block, shell = [], line[3:].strip() in ("", "bash", "sh", "shell", "console")
                continue
            if shell:
                commands += _commands_of("\n".join(block))
            block = None
        elif block is not None:
            block.append(line)
    return commands


def _commands_of(block: str) -> list[str]:
    joined = re.sub(r"\s*\\\n\s*", " ", block)
    lines = (line.split(" #")[0].strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def needs_environment(command: str) -> bool:
    words = [w for w in shlex.split(command) if not re.match(r"^[A-Z_]+=", w)]  # skip `VAR=value` prefixes
    return bool(words) and words[0] in ENV_TOOLS


def test_fenced_command_parser_sees_continuations_and_skips_comments():
    text = "```json\n{}\n```\n```bash\n# note\ntorchrun a \\\n    b   # why\nuv run x\n```\n```yaml\ny: 1\n```\n"
    assert fenced_commands(text) == ["torchrun a b", "uv run x"]
    assert needs_environment("WANDB_MODE=offline python -m x") and not needs_environment("uv run python -m x")


def test_every_environment_command_runs_through_uv_or_an_activated_venv():
    activated, bare = False, []
    for command in fenced_commands(README.read_text()):
        activated = activated or bool(ACTIVATE.match(command))
        if needs_environment(command) and not activated:
            bare.append(command)
    assert bare == [], f"README commands that fail after a bare `uv sync` (use `uv run ...`): {bare}"


def test_readme_says_how_to_get_uv():
    setup = README.read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]
    assert "pip install uv" in setup and setup.index("pip install uv") < setup.index("uv sync")


def _training_overrides() -> list[list[str]]:
    runs = []
    for command in fenced_commands(README.read_text()):
        words = shlex.split(command)
        for entry in ("lmms-train", "train.py"):
            if entry in words:
                runs.append([w for w in words[words.index(entry) + 1:] if w not in ("-m", "--cfg", "job")])
    return runs


def test_readme_has_training_commands():
    assert len(_training_overrides()) >= 6


@pytest.mark.parametrize("overrides", _training_overrides(), ids=lambda o: " ".join(o) or "(defaults)")
def test_readme_training_command_composes_and_validates(overrides):
    check_cli_overrides(overrides)
    if any("," in o and "[" not in o for o in overrides):
        return  # a multirun sweep: each job composes one value; the keys were checked above
    validate(compose_config(*overrides, shrink=False))
