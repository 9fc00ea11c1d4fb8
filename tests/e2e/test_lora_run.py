"""LoRA through the real entry point (parallel=single, CPU): checkpoints hold the adapters only,
resume is exact, and the merged export loads with plain transformers and gives the trained logits."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch.distributed.checkpoint import FileSystemReader
from transformers import AutoModelForCausalLM

from lmms_engine.config import validate
from lmms_engine.checkpoint.manager import latest_checkpoint, load_checkpoint
from lmms_engine.parallel.single import SingleDevice
from lmms_engine.train.app import run
from lmms_engine.train.lora import apply_lora
from lmms_engine.train.module import CausalLMWithLoss
from lmms_engine.train.optim import build_adamw
from tests.conftest import compose_config

LORA = ["trainer.max_steps=4", "trainer.save_every=2", "optim.lora={rank:4,alpha:8}", "optim.lr=1e-2"]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    cfg = compose_config(*LORA, f"data.cache_dir={tmp_path_factory.mktemp('cache')}")
    run_dir = tmp_path_factory.mktemp("lora_run")
    run(copy.deepcopy(cfg), run_dir)
    return cfg, run_dir


@pytest.mark.slow
def test_checkpoint_holds_the_adapters_only(lora_run):
    keys = FileSystemReader(str(lora_run[1] / "checkpoints" / "step_4")).read_metadata().state_dict_metadata
    weights = [k for k in keys if k.startswith("model.")]
    # lm_head is the tied embedding's second name, which torch's ignore_frozen_params does not see
    assert weights and all(".lora_" in k or k == "model.lm.lm_head.weight" for k in weights)


@pytest.mark.slow
def test_lora_resume_is_exact(lora_run, tmp_path):
    cfg, reference_dir = lora_run
    run_dir = tmp_path / "resumed"
    shutil.copytree(reference_dir, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_4")
    shutil.rmtree(run_dir / "hf")
    resumed = copy.deepcopy(cfg)
    resumed.trainer.resume = "auto"
    run(resumed, run_dir)
    keep = ("step", "loss", "grad_norm")
    assert [{k: r[k] for k in keep} for r in _rows(run_dir)] == [{k: r[k] for k in keep} for r in _rows(reference_dir)]


@pytest.mark.slow
def test_merged_export_loads_with_transformers_and_gives_the_trained_logits(lora_run):
    cfg, run_dir = lora_run
    torch.manual_seed(cfg.trainer.seed)  # the same frozen base as the run's
    bundle = instantiate(cfg.model, _convert_="all")
    apply_lora(bundle.model, validate(cfg).optim.lora, bundle.components())
    module = CausalLMWithLoss(bundle.model, loss_fn=None)
    optimizer = build_adamw(module, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8)
    strategy = SingleDevice(device="cpu")
    strategy.checkpoint_frozen = False
    load_checkpoint(latest_checkpoint(run_dir / "checkpoints"), module, optimizer, strategy)
    ids = torch.tensor([[5, 17, 200, 3, 9, 41, 77, 120]])
    exported = AutoModelForCausalLM.from_pretrained(run_dir / "hf")
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids).logits, module.lm(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
