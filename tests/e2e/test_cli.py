"""The launch forms, run as a user runs them (subprocesses on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_runs import metric_rows, run_dirs, train_cli


def _losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in metric_rows(run_dir)]


@pytest.mark.slow
def test_main_job_trains_the_tiny_vl_model_and_loss_falls(tmp_path):
    """`uv run lmms-train` with no arguments: the embedded default run (tiny Qwen2.5-VL on the
    text + image + video demo data)."""
    result = train_cli([f"output_root={tmp_path}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    assert run_dir.parent.name == "tiny_qwen2_5_vl"  # outputs/<name>/<timestamp>/
    stats = json.loads((run_dir / "data_stats.json").read_text())
    assert stats["images"] > 0 and stats["videos"] > 0
    losses = _losses(run_dir)
    assert len(losses) == 120
    assert sum(losses[-10:]) / 10 < 0.75 * sum(losses[:10]) / 10
    for item in (".hydra/config.yaml", ".hydra/overrides.yaml", "train.log", "checkpoints/step_120/COMPLETE", "hf/config.json",
                 "hf/processor_config.json"):
        assert (run_dir / item).exists(), item
    assert "step 120" in (run_dir / "train.log").read_text()


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = train_cli(["--cfg", "job", "--resolve"], tmp_path)  # --resolve: max_steps is ${unless:${.epochs},120}
    assert result.returncode == 0, result.stderr
    assert "max_steps: 120" in result.stdout and "epochs: null" in result.stdout and "_target_: lmms_engine.models.qwen2_5_vl.build_qwen2_5_vl" in result.stdout


def test_user_mistake_exits_with_a_one_line_message(tmp_path):
    result = train_cli([f"output_root={tmp_path}", "data=sft", f"data.dataset_path={tmp_path}/missing.jsonl"], tmp_path)
    assert result.returncode == 1
    assert "missing.jsonl" in result.stdout + result.stderr and "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_seed_launch_form_with_config_file(tmp_path):
    result = train_cli(["--config", "examples/tiny_text_sft.yaml", f"output_root={tmp_path}", "trainer.max_steps=3",
                     "trainer.export_hf=false"], tmp_path, module="lmms_engine.launch.cli")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    assert len(_losses(run_dir)) == 3
    composed = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "packing_length: 512" in composed and "lr: 0.0003" in composed


@pytest.mark.slow
def test_multirun_makes_one_directory_per_job(tmp_path):
    result = train_cli(["-m", "optim.lr=1e-3,2e-3", f"output_root={tmp_path}", "trainer.max_steps=2",
                     "trainer.export_hf=false", "data.packing_length=256"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = run_dirs(tmp_path)
    assert len(jobs) == 2 and jobs[0] != jobs[1]
    names = [d.name for d in jobs]
    assert names[0].startswith("0_") and "optim.lr=0.001" in names[0]
    assert names[1].startswith("1_") and "optim.lr=0.002" in names[1]


@pytest.mark.slow
def test_wandb_offline_logs_the_same_metrics(tmp_path):
    result = train_cli(["logger=wandb", f"output_root={tmp_path}", "trainer.max_steps=3", "trainer.export_hf=false",
                     "data.packing_length=256"], tmp_path, env_extra={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    (records,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    logged = records.read_bytes()
    # History items are stored as key + JSON value: every metric, with the very values of metrics.jsonl.
    for key in (b"loss", b"tokens_per_s", b"grad_norm", b"peak_mem_gb"):
        assert key in logged, key
    assert all(json.dumps(loss).encode() in logged for loss in _losses(run_dir))
