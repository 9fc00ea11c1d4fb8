"""The model families by name, as plain data: no torch, no transformers, so the entry point's config
checks (config_checks.py, before the heavy imports) can ask which media a model takes."""

from __future__ import annotations

# model_type -> the builder's import path. Each builder takes (name, pretrained, <processor or
# tokenizer>, trust_remote_code, structure_only) and returns a ModelBundle.
FAMILIES: dict[str, str] = {
    "qwen2": "lmms_engine.models.qwen2.build_qwen2",
    "qwen2_5_vl": "lmms_engine.models.qwen2_5_vl.build_qwen2_5_vl",
    "qwen2_audio": "lmms_engine.models.qwen2_audio.build_qwen2_audio",
    "lmms_omni": "lmms_engine.models.omni.build_omni",
    "qwen3": "lmms_engine.models.qwen3.build_qwen3",
    "qwen3_vl": "lmms_engine.models.qwen3_vl.build_qwen3_vl",
}

VISION, AUDIO = frozenset({"image", "video"}), frozenset({"audio"})
# The media kinds each builder's models take (none: a text model), known before anything is built
# (config_checks names the bundled demo data that fits); model=auto's once its checkpoint is read.
MEDIA_KINDS: dict[str, frozenset[str]] = {
    FAMILIES["qwen2"]: frozenset(), FAMILIES["qwen3"]: frozenset(), FAMILIES["qwen2_5_vl"]: VISION,
    FAMILIES["qwen3_vl"]: VISION, FAMILIES["qwen2_audio"]: AUDIO, FAMILIES["lmms_omni"]: VISION | AUDIO,
}
