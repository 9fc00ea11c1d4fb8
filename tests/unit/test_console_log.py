"""Off a terminal (CI logs, tee, cluster files) every console record is one whole line at any width;
on a terminal rich renders it as before."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest
from rich.console import Console

from lmms_engine.logging.console import ConsoleHandler
from tests.conftest import REPO

LONG = "data/some/very/long/path/" * 8 + "missing.jsonl: dataset_path does not exist"


def _log(console: Console, level: int, message: str) -> str:
    logger = logging.getLogger("test_console_log")
    handler = ConsoleHandler(console=console, show_path=False, markup=False)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        logger.log(level, "%s", message)
    finally:
        logger.removeHandler(handler)
    return console.file.getvalue()


@pytest.mark.parametrize("level,name", [(logging.ERROR, "ERROR"), (logging.WARNING, "WARNING"), (logging.INFO, "INFO")])
def test_off_a_terminal_a_long_record_stays_one_line(level, name):
    out = _log(Console(file=io.StringIO(), width=80), level, LONG)
    assert len(LONG) > 200 and out.count("\n") == 1
    assert out.rstrip("\n").endswith(f"] {name:<8} {LONG}")


def test_on_a_terminal_rich_renders_and_wraps_as_before():
    out = _log(Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None), logging.ERROR, LONG)
    assert out.count("\n") > 1 and "ERROR" in out


def test_a_traceback_follows_the_line():
    logger = logging.getLogger("test_console_log_exc")
    console = Console(file=io.StringIO(), width=80)
    logger.addHandler(ConsoleHandler(console=console))
    logger.propagate = False
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    lines = console.file.getvalue().splitlines()
    assert lines[0].endswith("ERROR    failed") and lines[1].startswith("Traceback") and lines[-1] == "RuntimeError: boom"


@pytest.mark.slow
def test_a_user_mistake_is_the_last_line_whole(tmp_path):
    """`lmms-train ... | tail -1` shows the whole message (the run's stdout is a pipe here)."""
    missing = tmp_path / ("a_rather_long_directory_name_" * 4) / "missing.jsonl"
    env = {**os.environ, "LMMS_ENGINE_CACHE": str(tmp_path / "cache"), "COLUMNS": "80"}
    result = subprocess.run([sys.executable, "-c", "from lmms_engine.train import main; main()", f"output_root={tmp_path}",
                             "model=tiny", "data=sft", f"data.dataset_path={missing}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    last = result.stdout.strip().splitlines()[-1]
    assert last.endswith(f"ERROR    {missing}: dataset_path does not exist"), result.stdout[-2000:]
