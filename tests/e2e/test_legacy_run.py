"""The original engine's config, run as its users run it: `python -m lmms_engine.launch.cli --config`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.config_store import ConfigStore

from lmms_engine.launch.cli import CLI_EXPERIMENT, experiment_translation, load_experiment
from lmms_engine.launch.legacy import is_legacy, write_dataset_yaml
from lmms_engine.overrides import compose_run
from lmms_engine.train.resolvers import register_resolvers
from tests.conftest import REPO
from tests.legacy_config import HAND_WRITTEN, ISSUE_CONFIG, local_issue_config

CPU = ["kernels.use_liger_kernel=false"]  # Liger needs CUDA; the rest of the config runs as written


def _python(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LMMS_ENGINE_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_print_translation_prints_the_equivalent_command(tmp_path):
    config = tmp_path / "legacy.yaml"
    config.write_text(ISSUE_CONFIG)
    result = _python(["-m", "lmms_engine.launch.cli", "--config", str(config), "--print-translation"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    command, note = result.stdout.splitlines()
    assert command.startswith("lmms-train model=auto data=sft kernels=liger_rmpad parallel=fsdp2 logger=wandb ")
    assert note.startswith("# parallel=fsdp2: launch under torchrun")


def test_print_translation_of_a_framework_yaml_prints_its_command(tmp_path):
    """A yaml already in this framework's schema is no error: its equivalent command, exit status 0."""
    result = _python(["-m", "lmms_engine.launch.cli", "--config", "examples/tiny_text_sft.yaml", "--print-translation"],
                     tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == ("lmms-train model=tiny data=demo kernels=none data.packing_length=512 trainer.max_steps=30 "
                             "trainer.save_every=0 trainer.log_every=5 optim.lr=0.0003 kernels.use_liger_kernel=false "
                             "kernels.use_rmpad=false\n")


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.yaml")
                                           if not is_legacy(yaml.safe_load(p.read_text()))))
def test_a_framework_yamls_translation_composes_the_same_config(example):
    path = REPO / "examples" / example
    ConfigStore.instance().store(group="experiment", name=CLI_EXPERIMENT, node=load_experiment(path), package="_global_")
    register_resolvers()
    assert compose_run(experiment_translation(path).overrides) == compose_run([f"experiment={CLI_EXPERIMENT}"])


def test_untranslatable_config_exits_with_one_line_per_key(tmp_path):
    node = yaml.safe_load(ISSUE_CONFIG)
    node["trainer_args"].update(fp16=True, lr_scheduler_type="polynomial")
    config = tmp_path / "legacy.yaml"
    config.write_text(yaml.safe_dump(node))
    result = _python(["-m", "lmms_engine.launch.cli", "--config", str(config)], tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"--config {config}: trainer_args.lr_scheduler_type: 'polynomial' has no counterpart; supported: "
                     "cosine, cosine_with_min_lr, linear, constant, constant_with_warmup",
                     f"--config {config}: trainer_args.fp16: fp16 is not supported; use bf16: true"]


@pytest.mark.slow
def test_cfg_job_of_the_config_equals_the_hand_written_commands(tmp_path):
    config = tmp_path / "legacy.yaml"
    config.write_text(ISSUE_CONFIG)
    dataset_yaml = write_dataset_yaml(yaml.safe_load(ISSUE_CONFIG)["dataset_config"]["datasets"], tmp_path / "cache")
    translated = _python(["-m", "lmms_engine.launch.cli", "--config", str(config), "--cfg", "job"], tmp_path)
    hand = _python(["train.py", *HAND_WRITTEN, f"data.dataset_path={dataset_yaml}", "--cfg", "job"], tmp_path)
    assert translated.returncode == 0 and hand.returncode == 0, translated.stderr[-2000:] + hand.stderr[-2000:]
    assert translated.stdout == hand.stdout
    assert "_target_: lmms_engine.models.registry.build_auto" in hand.stdout


@pytest.mark.slow
def test_issue_config_trains_in_one_process(tmp_path):
    config = local_issue_config(tmp_path)
    result = _python(["-m", "lmms_engine.launch.cli", "--config", str(config), *CPU], tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    (run_dir,) = [p.parent for p in (tmp_path / "output").rglob("metrics.jsonl")]
    assert run_dir.parent.name == "qwen2_5_vl_config"  # output_dir / run_name / <stamp>
    stats = json.loads((run_dir / "data_stats.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == stats["packs"] and stats["samples"] == 12  # num_train_epochs: 1, one pack per step
    log = (run_dir / "train.log").read_text()
    assert "model=auto:" in log and "'qwen2_5_vl' checkpoint" in log
    assert "fsdp2:" in log and "over 1 ranks" in log  # fsdp2: true, as a job of one rank
    assert "attention: sdpa over padding-free batches" in log  # flash_attention_2 -> the fastest available (CPU: sdpa)
    assert "runs as: lmms-train model=auto" in result.stderr
    assert "WARNING --config" in result.stderr and "packing_strategy" in result.stderr
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [f"step_{len(rows)}"]  # save_total_limit: 1
    assert (run_dir / "hf" / "config.json").is_file()
