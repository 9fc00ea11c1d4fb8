"""kernels.fp8: which layers torchao converts, and the clear refusals (no FP8 hardware here: CPU).
The FP8 training itself runs on an FP8 GPU only: tests/gpu/test_fp8_gpu.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmms_engine.config import validate
from lmms_engine.kernels.fp8 import check_fp8_supported, convert_decoder_linears, is_fp8_candidate
from lmms_engine.kernels.patcher import KernelPatcher
from lmms_engine.models.qwen2 import build_qwen2
from tests.conftest import compose_config

TINY = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Without torchao the first refusal names the extra to install; with it, the missing FP8 GPU.
REFUSAL = r"^kernels\.fp8=true needs (torchao|a CUDA GPU with FP8 tensor cores).*kernels\.fp8=false"


def _candidates(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and is_fp8_candidate(m, name)]


def test_only_the_decoder_layers_projections_are_candidates():
    model = build_qwen2(name="t", config=TINY).model
    expected = [f"model.layers.{i}.{part}.{p}" for i in range(2) for part, p in
                [("self_attn", p) for p in PROJECTIONS[:4]] + [("mlp", p) for p in PROJECTIONS[4:]]]
    assert sorted(_candidates(model)) == sorted(expected)  # no lm_head, no embeddings


def test_misaligned_or_encoder_linears_are_not_candidates():
    assert not is_fp8_candidate(nn.Linear(60, 64), "model.layers.0.mlp.up_proj")  # 60 % 16 != 0
    assert not is_fp8_candidate(nn.Linear(64, 64), "model.visual.blocks.0.mlp.up_proj")
    assert not is_fp8_candidate(nn.Linear(64, 64), "audio_tower.layers.0.fc1")
    assert is_fp8_candidate(nn.Linear(64, 48), "layers.3.self_attn.k_proj")  # a language model's own layers


def test_conversion_swaps_exactly_the_candidates():
    float8 = pytest.importorskip("torchao.float8.float8_linear")
    model = build_qwen2(name="t", config=TINY).model
    assert convert_decoder_linears(model) == 2 * len(PROJECTIONS)
    converted = sorted(n for n, m in model.named_modules() if isinstance(m, float8.Float8Linear))
    assert len(converted) == 2 * len(PROJECTIONS) and all(".layers." in n for n in converted)
    assert type(model.lm_head) is nn.Linear
    # Packs have any token count: the weight-gradient matmul (inner dimension = tokens) gets padded.
    assert all(m.config.pad_inner_dim for n, m in model.named_modules() if isinstance(m, float8.Float8Linear))


def test_fp8_is_refused_on_cpu_in_one_line():
    with pytest.raises(ValueError, match=REFUSAL) as err:
        check_fp8_supported(torch.device("cpu"))
    assert "\n" not in str(err.value)


def test_patcher_refuses_fp8_before_patching_anything():
    model = build_qwen2(name="t", config=TINY).model
    with pytest.raises(ValueError, match=REFUSAL):
        KernelPatcher(use_rmpad=True, fp8=True).apply(model, torch.device("cpu"), padding_free=True)
    assert model.config._attn_implementation == "sdpa"  # untouched: the refusal came first


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9),
                    reason="this machine has FP8: nothing to refuse")
def test_config_check_refuses_fp8_without_hardware():
    with pytest.raises(ValueError, match=REFUSAL):
        validate(compose_config("kernels.fp8=true"))


@pytest.mark.parametrize("value", ["yes", "1"])
def test_config_check_wants_a_boolean(value):
    with pytest.raises(ValueError, match=rf"^kernels\.fp8='?{value}'? must be true or false"):
        validate(compose_config(f"kernels.fp8={value}"))


def test_config_check_refuses_fp8_under_deepspeed():
    with pytest.raises(ValueError, match=r"^kernels\.fp8=true runs with parallel=single, ddp or fsdp2, not .*DeepSpeedZero"):
        validate(compose_config("parallel=zero2", "kernels.fp8=true"))
