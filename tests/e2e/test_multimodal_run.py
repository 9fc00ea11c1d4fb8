"""End-to-end runs of the multimodal tiny presets on their bundled demo data, on CPU: the default
config (tiny Qwen2.5-VL on text + image + video), tiny Qwen3-VL on the same data, tiny Qwen2-Audio on
text + audio and the tiny omni model on all of them. Each trains, resumes exactly, and exports a checkpoint that transformers' own
(Auto) classes load."""

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
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2AudioForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
)
from transformers.video_utils import VideoMetadata

import lmms_engine.models.omni  # noqa: F401  registers lmms_omni with the Auto classes

from lmms_engine.checkpoint.manager import latest_checkpoint, load_checkpoint
from lmms_engine.parallel.single import SingleDevice
from lmms_engine.train.app import run
from lmms_engine.train.module import CausalLMWithLoss
from lmms_engine.train.optim import build_adamw
from tests.conftest import compose_config

# family -> (overrides on top of the default config, HF class of the export, media stats to expect)
FAMILIES = {
    "vl": ([], Qwen2_5_VLForConditionalGeneration, ("images", "videos")),
    "audio": (["model=tiny_qwen2_audio", "data=demo_audio"], Qwen2AudioForConditionalGeneration, ("audios",)),
    "omni": (["model=tiny_omni", "data=demo_omni"], AutoModelForImageTextToText, ("images", "audios")),
    "qwen3_vl": (["model=tiny_qwen3_vl"], Qwen3VLForConditionalGeneration, ("images", "videos")),
}


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def _family_run(request, tmp_path_factory):
    """Six steps with a checkpoint after step 3; packs of 1024 tokens so the video fits; two
    processes collate ahead (the GPU default), so resume is checked through the prefetcher too."""
    overrides, _, _ = FAMILIES[request.param]
    run_dir = tmp_path_factory.mktemp(f"{request.param}_run")
    cache = tmp_path_factory.mktemp(f"{request.param}_cache")
    cfg = compose_config("trainer.max_steps=6", "trainer.save_every=3", "data.packing_length=1024",
                         "trainer.data_workers=2", f"data.cache_dir={cache}", *overrides, vl=True)
    run(cfg, run_dir)
    return request.param, cfg, run_dir


@pytest.fixture
def family_run(_family_run):
    family, cfg, run_dir = _family_run
    return family, copy.deepcopy(cfg), run_dir


def test_trains_on_its_media(family_run):
    family, cfg, run_dir = family_run
    stats = json.loads((run_dir / "data_stats.json").read_text())
    assert all(stats[key] > 0 for key in FAMILIES[family][2])
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)


def test_default_config_is_the_tiny_vl_model():
    assert compose_config(vl=True).model.name == "tiny_qwen2_5_vl"


def test_resume_reproduces_the_remaining_steps(family_run, tmp_path):
    _, cfg, reference_dir = family_run
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


def _processor_inputs(family: str, processor) -> dict:
    parts, media = [], {}
    if family in ("vl", "omni", "qwen3_vl"):
        parts.append({"type": "image_url", "image_url": "x.png"})
        media["images"] = [Image.fromarray(np.full((56, 56, 3), 255, dtype=np.uint8))]
    if family in ("audio", "omni"):
        parts.append({"type": "audio_url", "audio_url": "x.wav"})
        tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
        media.update(audio=[tone], sampling_rate=16000)
    if family == "qwen3_vl":  # a video too: its `<t seconds>` timestamps need the clip's metadata
        parts.append({"type": "video_url", "video_url": "x.mp4"})
        frames = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
        media.update(videos=[frames], do_sample_frames=False, cap_pixels_per_frame=False,
                     video_metadata=[VideoMetadata(total_num_frames=5, fps=2.0, frames_indices=list(range(5)))])
    messages = [{"role": "user", "content": [*parts, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], return_tensors="pt", **media)


def test_export_loads_with_transformers_classes(family_run):
    family, cfg, run_dir = family_run
    bundle = instantiate(cfg.model, _convert_="all")
    module = CausalLMWithLoss(bundle.model, loss_fn=None)
    # The run's parameter groups (one pair per component), so the checkpoint's optimizer state maps onto them.
    optimizer = build_adamw(module, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8,
                            components=bundle.components())
    load_checkpoint(latest_checkpoint(run_dir / "checkpoints"), module, optimizer, SingleDevice(device="cpu"))
    exported = FAMILIES[family][1].from_pretrained(run_dir / "hf")
    processor = AutoProcessor.from_pretrained(run_dir / "hf")
    assert type(processor) is type(bundle.processor)
    for part in ("image_processor", "video_processor", "feature_extractor"):
        if hasattr(bundle.processor, part):  # same class and settings (so the data path measures alike)
            assert getattr(processor, part).to_dict() == getattr(bundle.processor, part).to_dict()
    inputs = _processor_inputs(family, processor)
    if family == "qwen3_vl":
        assert inputs["video_grid_thw"].tolist() == [[3, 4, 4]]
        assert "seconds><|vision_start|>" in processor.decode(inputs["input_ids"][0])
    with torch.no_grad():
        expected = module.lm(**inputs).logits
        got = exported(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
