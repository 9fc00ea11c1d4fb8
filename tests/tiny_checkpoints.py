"""Tiny checkpoints saved by stock transformers (`save_pretrained` of a tiny random model and its
tokenizer / processor), as a user's local checkpoint folder would be."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR

# preset -> the model_type its checkpoint's config.json carries
TINY_PRESETS = {"tiny": "qwen2", "tiny_qwen2_5_vl": "qwen2_5_vl", "tiny_qwen2_audio": "qwen2_audio",
                "tiny_omni": "lmms_omni"}


def save_tiny_checkpoint(preset: str, folder: Path) -> Path:
    node = OmegaConf.load(Path(CONF_DIR) / "model" / f"{preset}.yaml")
    bundle = instantiate(node, _convert_="all")
    bundle.model.save_pretrained(folder)
    bundle.artifacts().save_pretrained(folder)
    return folder
