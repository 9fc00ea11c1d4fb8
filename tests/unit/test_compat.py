"""Each private library API in lmms_engine/compat.py, checked by name: an upgrade that moves or changes
one fails here, naming it, instead of deep inside a training run."""

from __future__ import annotations

import inspect

import pytest
import torch

from lmms_engine import compat

# ---------------------------------------------------------------- transformers


def test_qwen2_audio_process_audio_is_the_processors_expansion():
    process = compat.qwen2_audio_process_audio()
    assert callable(process), "transformers: Qwen2AudioProcessor._process_audio is gone"
    assert list(inspect.signature(process).parameters)[0] == "self"


def test_submodule_from_config_builds_a_sub_model_with_its_attention_implementation():
    from transformers import Qwen2AudioEncoderConfig
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

    config = Qwen2AudioEncoderConfig(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                                     num_mel_bins=16, max_source_positions=8)
    encoder = compat.submodule_from_config(Qwen2AudioEncoder, config)
    assert isinstance(encoder, Qwen2AudioEncoder), "transformers: PreTrainedModel._from_config changed"
    assert encoder.config._attn_implementation in ("sdpa", "eager")
    assert encoder.conv1.in_channels == 16


# ---------------------------------------------------------------- liger-kernel


def test_liger_instance_patches_rebind_forward():
    pytest.importorskip("liger_kernel")
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm

    norm = Qwen2RMSNorm(8, eps=1e-6)
    compat.liger_patch_rms_norm(norm, eps=1e-6)
    assert "forward" in vars(norm), "liger-kernel: monkey_patch._patch_rms_norm_module changed"
    mlp = Qwen2MLP(Qwen2Config(hidden_size=8, intermediate_size=16))
    compat.liger_patch_swiglu(mlp)
    assert "forward" in vars(mlp), "liger-kernel: monkey_patch._patch_swiglu_module changed"
    assert torch.is_tensor(norm.weight)
