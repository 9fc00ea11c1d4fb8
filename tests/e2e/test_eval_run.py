"""Evaluation inside a real run: logged at eval_every and after the last step, without disturbing
training (same losses as a run without it) or resume (a resumed run reproduces eval and train losses)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from lmms_engine.train.app import run
from tests.conftest import compose_config

EVAL = ["trainer.max_steps=4", "trainer.save_every=2", "trainer.export_hf=false", "data.eval_fraction=0.02"]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    cfg = compose_config(*EVAL, "trainer.eval_every=3", f"data.cache_dir={cache}")
    run_dir = tmp_path_factory.mktemp("eval_run")
    run(copy.deepcopy(cfg), run_dir)
    return cfg, run_dir


@pytest.mark.slow
def test_eval_at_every_n_and_after_the_last_step(eval_run):
    rows = _rows(eval_run[1])
    assert [r["step"] for r in rows if "eval_loss" in r] == [3, 4]
    assert all(r["eval_tokens"] > 0 and r["eval_loss"] > 0 for r in rows if "eval_loss" in r)


@pytest.mark.slow
def test_eval_does_not_change_training(eval_run, tmp_path):
    cfg, run_dir = eval_run
    plain = copy.deepcopy(cfg)
    plain.trainer.eval_every = 0
    plain.data.eval_fraction = 0.02  # the same training records, evaluated only after the last step
    run(plain, tmp_path / "plain")
    assert [r["loss"] for r in _rows(tmp_path / "plain")] == [r["loss"] for r in _rows(run_dir)]


@pytest.mark.slow
def test_resume_reproduces_eval_and_train_losses(eval_run, tmp_path):
    cfg, reference_dir = eval_run
    run_dir = tmp_path / "resumed"
    shutil.copytree(reference_dir, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_4")
    resumed_cfg = copy.deepcopy(cfg)
    resumed_cfg.trainer.resume = "auto"
    run(resumed_cfg, run_dir)
    assert _strip(_rows(run_dir)) == _strip(_rows(reference_dir))  # exact: same weights, same data


def _strip(rows: list[dict]) -> list[dict]:
    keep = ("step", "loss", "grad_norm", "eval_loss", "eval_tokens")
    return [{k: r[k] for k in keep if k in r} for r in rows]
