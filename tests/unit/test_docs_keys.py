"""docs/train.md §4 documents exactly the keys that `--cfg job` composes: every documented key exists
in each option it is documented for, and every composed key is documented."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest
from omegaconf import OmegaConf

from lmms_engine.config import OptimConfig, TrainerConfig
from tests.conftest import REPO, compose_config

TRAIN_MD = REPO / "docs" / "train.md"
ABSENT = "—"  # a key the option does not have


def section(heading: str) -> str:
    text = TRAIN_MD.read_text()
    start = text.index(f"\n### {heading}")
    end = text.find("\n### ", start + 1)
    return text[start:end]


def key_table(text: str) -> tuple[list[str], list[tuple[list[str], list[str]]]]:
    """(header cells, rows of (keys, cells)) of the table whose first header cell is `key`."""
    lines = [line for line in text.splitlines() if line.startswith("| key |")]
    assert lines, "no key table"
    table = text[text.index(lines[0]):].split("\n\n")[0].splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = []
    for line in table[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        rows.append((re.findall(r"`([a-z_][a-z0-9_]*)`", cells[0]), cells[1:]))
    return header, rows


def documented(heading: str, column: str | None = None) -> set[str]:
    header, rows = key_table(section(heading))
    index = header.index(column) - 1 if column else None
    return {key for keys, cells in rows for key in keys if index is None or cells[index] != ABSENT}


def composed(group: str, option: str) -> set[str]:
    node = compose_config(f"{group}={option}", shrink=False)[group]
    return {k for k in OmegaConf.to_container(node) if not k.startswith("_")}


@pytest.mark.parametrize("option,column", [("demo_vl", "**`demo_vl`**"), ("demo", "`demo`"), ("demo_audio", "`demo_audio`"),
                                           ("sft", "`sft`")])
def test_data_keys_match_the_docs(option, column):
    assert documented("`data/`", column) == composed("data", option)


@pytest.mark.parametrize("option,column", [("single", "single"), ("fsdp2", "fsdp2"), ("ddp", "ddp"), ("zero3", "zero*")])
def test_parallel_keys_match_the_docs(option, column):
    assert documented("`parallel/`", column) == composed("parallel", option)


@pytest.mark.parametrize("option", ["none", "rmpad", "liger", "liger_rmpad"])
def test_kernels_keys_match_the_docs(option):
    assert documented("`kernels/`") == composed("kernels", option)


@pytest.mark.parametrize("heading,schema", [("`trainer/default`", TrainerConfig), ("`optim/adamw`", OptimConfig)])
def test_typed_group_keys_match_the_docs(heading, schema):
    assert documented(heading) == {f.name for f in fields(schema)}


def test_table_reader_sees_absent_cells():
    header, rows = key_table("\n| key | a | b |\n|---|---|---|\n| `x`, `y` | 1 | — |\n| `z` | — | 2 |\n")
    assert header == ["key", "a", "b"] and rows[0] == (["x", "y"], ["1", "—"])
