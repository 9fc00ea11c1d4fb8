"""Qwen3 dense causal language models: from a hub id or local path, or randomly initialised from a
preset's config (conf/model/*qwen3*.yaml). A text family: the decoder alone, no encoders.

Qwen3 differs from Qwen2 by an RMSNorm on each head's queries and keys (before rotary) and an
explicit head_dim; both act per token, so packed rows need nothing beyond Qwen2's: the packed
attention backend sees the normed, rotated q / k like any other, and the family's Liger patch
(`patch_qwen3` below) covers the q / k norms too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

from lmms_engine.kernels.liger import patch_decoder_ops, patch_qk_norms, patch_rotary, register_liger
from lmms_engine.models.base import ModelBundle
from lmms_engine.models.causal_lm import build_causal_lm, builtin_tokenizer, text_config
from lmms_engine.models.family import ModelFamily

SUPPORTED_MODEL_TYPES = ("qwen3",)


def build_qwen3(
    name: str,
    pretrained: str | None = None,
    tokenizer: str | None = None,
    config: Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
    structure_only: bool = False,
) -> ModelBundle:
    """Build a Qwen3 dense causal LM.

    pretrained: hub id or local path; None = random init from `config` (a Qwen3Config dict).
    tokenizer: hub id or local path; None = the pretrained model's tokenizer, or the built-in
      byte-level ChatML tokenizer when initialising randomly.
    structure_only: the module tree from the config, no weights read (ranks that receive them).
    """
    return build_causal_lm(Qwen3ForCausalLM, Qwen3Config, Qwen3DecoderLayer, SUPPORTED_MODEL_TYPES,
                           name=name, pretrained=pretrained, tokenizer=tokenizer, config=config, trust_remote_code=trust_remote_code,
                           structure_only=structure_only)


def qwen3_hf_config(pretrained: str | None, config: Mapping[str, Any] | None, trust_remote_code: bool) -> Qwen3Config:
    """The checkpoint's config (refused unless qwen3), or one from a preset."""
    return text_config(Qwen3Config, SUPPORTED_MODEL_TYPES, pretrained, config, trust_remote_code)


@register_liger("qwen3")
def patch_qwen3(model: nn.Module) -> list[str]:
    """Qwen3 dense from Liger's ops, instance-level (liger-kernel's own qwen3 patch also replaces
    module-level classes for every later model): RMSNorm on every decoder layer, the per-head
    q / k norms and the final norm, SwiGLU on the MLPs, Liger's rotary kernel."""
    from transformers.models.qwen3 import modeling_qwen3

    text = model.model
    norms = patch_decoder_ops(text) + patch_qk_norms(text)
    patch_rotary(modeling_qwen3)
    return [f"qwen3 (lmms_engine registry): {len(norms)} RMSNorm (q / k norms included), "
            f"{len(text.layers)} SwiGLU MLPs, rope (liger_rotary_pos_emb)"]


FAMILY = ModelFamily(
    name="qwen3",
    builder="lmms_engine.models.qwen3.build_qwen3",
    model_types=SUPPORTED_MODEL_TYPES,
    presets=("tiny_qwen3", "qwen3", "qwen3_0_6b", "qwen3_1_7b", "qwen3_4b", "qwen3_8b"),
    bench_preset="qwen3_4b",
    builtin_processor=builtin_tokenizer,
    liger=patch_qwen3,
)
