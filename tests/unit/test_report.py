"""lmms-report without training: its one-line mistakes, where it writes, and that neither it nor a failed
plot can slow or fail `lmms-train` (real runs: tests/e2e/test_report_run.py)."""

from __future__ import annotations

import ast
import logging
import re
import tomllib

import pytest

from lmms_engine.logging.report import default_out_dir, main, write_run_report
from tests.conftest import REPO


def test_no_module_imports_matplotlib_at_import_time():
    """lmms-train imports the report module; matplotlib (~1 s) is imported inside the plotting function only."""
    eager = []
    for path in sorted((REPO / "lmms_engine").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            eager += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "matplotlib"]
    assert eager == []


def test_lmms_report_is_a_console_script():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lmms-report"] == "lmms_engine.logging.report:main"


@pytest.mark.parametrize("what,message", [
    ("missing", r"^lmms-report: \S+/missing: no such directory; pass a run directory \(outputs/<name>/<stamp>\)"),
    ("empty", r"^lmms-report: \S+/empty: no metrics\.jsonl in it nor in its sub-directories; pass a run directory"),
])
def test_a_path_that_is_no_run_is_one_line(tmp_path, capsys, what, message):
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / what)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.match(message, err), err


def test_a_report_that_cannot_be_made_is_one_warning_not_an_error(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lmms_engine.train"):
        assert write_run_report(tmp_path / "gone") is None
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.getMessage().startswith("report.html not written (ValueError: ")
    assert record.getMessage().endswith(f"the run is complete; try again with: lmms-report {tmp_path / 'gone'}")


def test_the_report_goes_into_the_one_directory_given_else_the_common_parent(tmp_path):
    a, b = tmp_path / "tiny" / "multirun_1", tmp_path / "tiny" / "multirun_2"
    assert default_out_dir([a]) == a
    assert default_out_dir([a, b]) == (tmp_path / "tiny").resolve()
