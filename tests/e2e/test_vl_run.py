"""End-to-end runs of the default config: the tiny Qwen2.5-VL on the bundled text + image + video
demo data, on CPU. Trains, resumes exactly, exports a checkpoint transformers loads."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from lmms_engine.checkpoint.manager import latest_checkpoint, load_checkpoint
from lmms_engine.parallel.single import SingleDevice
from lmms_engine.train.app import run
from lmms_engine.train.module import CausalLMWithLoss
from lmms_engine.train.optim import build_adamw
from tests.conftest import compose_config


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def _vl_run(tmp_path_factory):
    """Six steps with a checkpoint after step 3; packs of 1024 tokens so the video fits; two
    processes collate ahead (the GPU default), so resume is checked through the prefetcher too."""
    run_dir = tmp_path_factory.mktemp("vl_run")
    cache = tmp_path_factory.mktemp("vl_cache")
    cfg = compose_config("trainer.max_steps=6", "trainer.save_every=3", "data.packing_length=1024",
                         "trainer.data_workers=2", f"data.cache_dir={cache}", vl=True)
    run(cfg, run_dir)
    return cfg, run_dir


@pytest.fixture
def vl_run(_vl_run):
    cfg, run_dir = _vl_run
    return copy.deepcopy(cfg), run_dir


def test_default_config_is_the_tiny_vl_model_on_mixed_demo_data(vl_run):
    cfg, run_dir = vl_run
    assert cfg.model.name == "tiny_qwen2_5_vl"
    stats = json.loads((run_dir / "data_stats.json").read_text())
    assert stats["images"] > 0 and stats["videos"] > 0 and stats["samples"] > stats["images"]
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)


def test_vl_resume_reproduces_the_remaining_steps(vl_run, tmp_path):
    cfg, reference_dir = vl_run
    run_dir = tmp_path / "resumed"
    shutil.copytree(reference_dir, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_6")
    shutil.rmtree(run_dir / "hf")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()[:3]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    cfg.trainer.resume = "auto"
    run(cfg, run_dir)
    resumed, reference = _metrics(run_dir), _metrics(reference_dir)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert [r["loss"] for r in resumed[3:]] == [r["loss"] for r in reference[3:]]
    assert [r["grad_norm"] for r in resumed[3:]] == [r["grad_norm"] for r in reference[3:]]


def test_vl_export_loads_with_transformers_auto_classes(vl_run):
    cfg, run_dir = vl_run
    bundle = instantiate(cfg.model, _convert_="all")
    module = CausalLMWithLoss(bundle.model, loss_fn=None)
    optimizer = build_adamw(module, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8)
    load_checkpoint(latest_checkpoint(run_dir / "checkpoints"), module, optimizer, SingleDevice(device="cpu"))
    exported = Qwen2_5_VLForConditionalGeneration.from_pretrained(run_dir / "hf")
    processor = AutoProcessor.from_pretrained(run_dir / "hf")
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": "x.png"},
                                             {"type": "text", "text": "What color is the shape?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = Image.fromarray(np.full((56, 56, 3), 255, dtype=np.uint8))
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    with torch.no_grad():
        expected = module.lm(**inputs).logits
        got = exported(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
