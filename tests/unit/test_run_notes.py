"""What a run says about choices it made silently before (resume=auto without a checkpoint, samples
dropped as overlong, no MFU off-GPU, OMP_NUM_THREADS under torchrun), and the noise it no longer makes."""

from __future__ import annotations

import json
import logging
import os

from lmms_engine.logging.data_notes import dropped_overlong_warning
from lmms_engine.train.app import run, torchrun_env
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


def test_a_cpu_run_says_once_why_there_is_no_mfu_and_exports_without_a_progress_bar(tmp_path, data_cache, caplog, capfd):
    run_dir = tmp_path / "run"
    cfg = compose_config("trainer.max_steps=3", "trainer.export_hf=true", "data.eval_fraction=0.05")
    with caplog.at_level(logging.INFO, logger="lmms_engine"):
        run(cfg, run_dir)
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "MFU" in m] == [
        "MFU needs a CUDA device's peak FLOP/s: not shown on cpu (metrics.jsonl: mfu null)"]
    step_lines = [m for m in messages if m.startswith("step ")]
    assert len(step_lines) == 4 and not any("mfu" in m for m in step_lines)  # 3 steps + the eval after the last
    (warmup,) = [m for m in messages if m.startswith("compile + warm-up: ")]
    assert float(warmup.split()[3]) >= 0
    # The eval line names what it counts: the trained label tokens data_stats.json lists as eval.label_tokens.
    eval_stats = json.loads((run_dir / "data_stats.json").read_text())["eval"]
    assert step_lines[-1].endswith(f" over {eval_stats['label_tokens']:,} trained label tokens")
    assert 0 < eval_stats["label_tokens"] < eval_stats["tokens"]
    assert "Writing model shards" not in "".join(capfd.readouterr())
    assert (run_dir / "hf" / "model.safetensors").is_file()


def test_torchrun_children_get_omp_num_threads_said_once(caplog):
    with caplog.at_level(logging.INFO, logger="lmms_engine"):
        env = torchrun_env(2, {"PATH": "/bin"})
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": str(threads)}
    assert [r.getMessage() for r in caplog.records] == [
        f"OMP_NUM_THREADS={threads} for each of the 2 processes (the CPUs shared among them; set OMP_NUM_THREADS to choose)"]
    assert torchrun_env(2, {"OMP_NUM_THREADS": "3"}) == {"OMP_NUM_THREADS": "3"}  # the user's choice stays
