"""What a run says about choices it made silently before: resume=auto without a checkpoint, samples
dropped as overlong."""

from __future__ import annotations

import json
import logging

from lmms_engine.logging.data_notes import dropped_overlong_warning
from lmms_engine.train.app import run
from tests.conftest import compose_config


def test_overlong_warning_names_the_count_and_both_fixes():
    message = dropped_overlong_warning({"samples": 498, "dropped_overlong": 2}, 1024)
    assert message == ("2 sample(s) were dropped as longer than data.packing_length=1024 tokens (counted in "
                       "data_stats.json); to train on them raise data.packing_length or set data.overlong=truncate")
    assert dropped_overlong_warning({"samples": 500, "dropped_overlong": 0}, 1024) is None


def test_resume_auto_without_checkpoint_and_dropped_samples_are_logged(tmp_path, data_cache, caplog):
    run_dir = tmp_path / "run"
    cfg = compose_config("trainer.resume=auto", "trainer.max_steps=1", "trainer.save_final=false", "trainer.export_hf=false",
                         "data.packing_length=160")
    with caplog.at_level(logging.INFO, logger="lmms_engine"):
        run(cfg, run_dir)
    dropped = json.loads((run_dir / "data_stats.json").read_text())["dropped_overlong"]
    assert dropped > 0
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("INFO", f"trainer.resume=auto: no complete checkpoint in {run_dir / 'checkpoints'}; training starts from scratch") \
        in messages
    assert ("WARNING", dropped_overlong_warning({"dropped_overlong": dropped}, 160)) in messages
