"""The issue's config of the original engine (its documentation example), the same run written by hand
in this framework's form, and a local copy of the config that trains on a CPU in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.tiny_checkpoints import save_tiny_checkpoint

DEMO_TEXT = Path(__file__).resolve().parents[1] / "lmms_engine" / "data" / "demo" / "text_chat.jsonl"

# The issue's config (the original engine's documentation example), verbatim.
ISSUE_CONFIG = """
trainer_type: fsdp2_trainer
dataset_config:
  dataset_type: vision
  dataset_format: yaml
  datasets:
    - {path: data/open_thoughts_debug, data_folder: "", data_type: arrow}
  processor_config: {processor_name: "Qwen/Qwen2.5-VL-7B-Instruct", processor_type: "qwen2_5_vl"}
  packing: true
  packing_strategy: first_fit
  packing_length: 16384
model_config:
  load_from_pretrained_path: "Qwen/Qwen2.5-VL-7B-Instruct"
  attn_implementation: "flash_attention_2"
trainer_args:
  per_device_train_batch_size: 1
  learning_rate: 1.0e-06
  weight_decay: 0.0
  gradient_accumulation_steps: 1
  gradient_checkpointing: true
  num_train_epochs: 1
  save_steps: 100
  save_total_limit: 1
  report_to: "wandb"
  output_dir: "./output/debug"
  warmup_ratio: 0.0
  run_name: "qwen2_5_vl_config"
  logging_steps: 1
  dataloader_num_workers: 8
  bf16: true
  lr_scheduler_type: "cosine"
  freeze_modules: ["visual"]
  use_liger_kernel: true
  use_rmpad: true
  fsdp2: true
  fsdp_config: {transformer_layer_cls_to_wrap: ["Qwen2_5_VLDecoderLayer"], reshard_after_forward: false}
"""

# The same run written by hand in the framework's own form (docs/train.md, "Coming from the original engine").
HAND_WRITTEN = [
    "model=auto", "data=sft", "kernels=liger_rmpad", "parallel=fsdp2", "logger=wandb",
    "model.pretrained=Qwen/Qwen2.5-VL-7B-Instruct", "data.packing=true", "data.packing_length=16384",
    "kernels.attn_backend=auto", "parallel.reshard_after_forward=false", "parallel.activation_checkpointing=true",
    "parallel.precision=auto", "optim.lr=1e-6", "optim.weight_decay=0.0", "optim.betas=[0.9,0.999]", "optim.eps=1e-8",
    "optim.schedule=cosine", "optim.min_lr_ratio=0.0", "optim.warmup_steps=0", "optim.freeze=[vision,merger]",
    "trainer.epochs=1", "trainer.grad_accum=1", "trainer.max_grad_norm=1.0", "trainer.seed=42", "trainer.save_every=100",
    "trainer.keep_last=1", "trainer.log_every=1", "trainer.data_workers=8", "logger.wandb.name=qwen2_5_vl_config",
    "output_root=./output/debug", "name=qwen2_5_vl_config",
]


def local_issue_config(root: Path, records: int = 12) -> Path:
    """The issue's config pointing at a tiny Qwen2.5-VL checkpoint saved by transformers and at a local
    arrow data set, with sizes for a CPU: packing_length 256, dataloader_num_workers 0, output under
    `root`. Everything else is as the issue wrote it (Liger, which needs CUDA, is switched off on the
    command line by the tests)."""
    checkpoint = save_tiny_checkpoint("tiny_qwen2_5_vl", root / "Tiny-Qwen2.5-VL")
    data = root / "open_thoughts_debug"
    rows = [json.loads(line) for line in DEMO_TEXT.read_text().splitlines()[:records]]
    import datasets  # noqa: PLC0415 (only the tests that train need it)

    datasets.Dataset.from_list(rows).save_to_disk(str(data))
    node = yaml.safe_load(ISSUE_CONFIG)
    node["dataset_config"]["datasets"][0]["path"] = str(data)
    node["dataset_config"]["processor_config"]["processor_name"] = str(checkpoint)
    node["dataset_config"]["packing_length"] = 256
    node["model_config"]["load_from_pretrained_path"] = str(checkpoint)
    node["trainer_args"].update(output_dir=str(root / "output"), dataloader_num_workers=0)
    path = root / "legacy.yaml"
    path.write_text(yaml.safe_dump(node, sort_keys=False))
    return path
