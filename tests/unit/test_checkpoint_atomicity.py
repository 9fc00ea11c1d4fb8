"""A half-written checkpoint is never resumed from."""

from __future__ import annotations

import pytest

from lmms_engine.checkpoint.manager import COMPLETE_MARKER, latest_checkpoint, load_checkpoint


def _step_dir(root, name, complete):
    path = root / name
    path.mkdir(parents=True)
    if complete:
        (path / COMPLETE_MARKER).write_text("ok\n")
    return path


def test_latest_checkpoint_skips_unfinished_ones(tmp_path):
    _step_dir(tmp_path, "step_10", complete=True)
    _step_dir(tmp_path, "step_20", complete=False)  # killed before the marker
    _step_dir(tmp_path, "step_30.tmp", complete=True)  # killed before the rename
    _step_dir(tmp_path, "step_9", complete=True)
    assert latest_checkpoint(tmp_path).name == "step_10"


def test_latest_checkpoint_of_an_empty_or_missing_folder_is_none(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None


def test_loading_an_incomplete_checkpoint_is_refused(tmp_path):
    path = _step_dir(tmp_path, "step_5", complete=False)
    with pytest.raises(ValueError, match="incomplete"):
        load_checkpoint(path, module=None, optimizer=None, strategy=None)
