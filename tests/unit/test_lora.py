"""LoRA on peft: which layers get adapters, that only they train, the merged and adapter-only
exports (plain transformers / peft give the adapted model's logits), the MFU formula, config errors."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lmms_engine.checkpoint.export import export_adapter
from lmms_engine.config import LoraSettings, validate
from lmms_engine.models.flops import matmul_params, train_flops
from lmms_engine.models.qwen2 import build_qwen2
from lmms_engine.parallel.single import SingleDevice
from lmms_engine.train.lora import adapter_params, adapter_state, apply_lora, lora_step_flops, merged_state
from lmms_engine.train.module import CausalLMWithLoss
from lmms_engine.train.optim import build_adamw
from tests.conftest import compose_config
from tests.unit.test_packed_parity import TINY

IDS = torch.tensor([[5, 17, 200, 3, 9, 41, 77, 120]])


def _lora_model(seed: int = 0, **settings):
    torch.manual_seed(seed)
    bundle = build_qwen2(name="t", config=TINY)
    config = apply_lora(bundle.model, LoraSettings(rank=4, alpha=8.0, **settings), bundle.components())
    with torch.no_grad():  # peft starts B at zero (a no-op adapter): make the adapters matter
        for name, param in bundle.model.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)
    return bundle, config


def test_adapters_on_decoder_projections_only_they_train():
    bundle, config = _lora_model()
    trainable = [n for n, p in bundle.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(config.target_modules) == 7 * TINY["num_hidden_layers"]
    assert not any("lm_head" in t or "embed" in t for t in config.target_modules)
    optimizer = build_adamw(bundle.model, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8)
    in_optimizer = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert in_optimizer == adapter_params(bundle.model)
    h, inter, layers, r = TINY["hidden_size"], TINY["intermediate_size"], TINY["num_hidden_layers"], 4
    head_dim, kv = h // TINY["num_attention_heads"], TINY["num_key_value_heads"]
    per_layer = r * (2 * h + 2 * (h + kv * head_dim) + 2 * h + 2 * (h + inter) + (inter + h))  # q k v o gate up down
    assert in_optimizer == layers * per_layer


def test_target_modules_are_restricted_and_a_miss_is_one_clear_error():
    bundle, config = _lora_model(target_modules=["q_proj", "v_proj"])
    assert sorted({t.rsplit(".", 1)[1] for t in config.target_modules}) == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="match no nn.Linear"):
        _lora_model(target_modules=["qkv"])
    with pytest.raises(ValueError, match="unknown component"):
        _lora_model(components=["vision"])


def test_merged_export_gives_the_adapted_models_logits(tmp_path):
    bundle, _ = _lora_model()
    with torch.no_grad():
        expected = bundle.model(input_ids=IDS).logits
        merged = merged_state(bundle.model.state_dict(), scaling=8.0 / 4)
    plain = build_qwen2(name="t", config=TINY).model
    assert set(merged) == set(plain.state_dict())  # plain HF names, no adapter left
    plain.load_state_dict(merged)
    plain.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=IDS).logits, expected, atol=1e-5, rtol=1e-5)


def test_adapter_export_loads_with_peft(tmp_path):
    bundle, config = _lora_model(seed=0)
    module = CausalLMWithLoss(bundle.model, loss_fn=None)
    export_adapter(module, config, adapter_state, tmp_path / "hf", SingleDevice(device="cpu"))
    with torch.no_grad():
        expected = bundle.model(input_ids=IDS).logits
    torch.manual_seed(0)  # the same base weights (random init from the same seed)
    base = build_qwen2(name="t", config=TINY).model
    loaded = PeftModel.from_pretrained(base, tmp_path / "hf")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, atol=1e-6, rtol=1e-6)


def test_lora_flops_charge_frozen_weights_forward_and_input_gradient_only():
    bundle, _ = _lora_model()
    config, lengths = bundle.model.config, [30, 10]
    flops = lora_step_flops(lambda b: train_flops(config, b["doc_lengths"]), config, adapter_params(bundle.model))
    attention = train_flops(config, lengths) - 6 * matmul_params(config) * 40
    expected = 4 * matmul_params(config) * 40 + 6 * adapter_params(bundle.model) * 40 + attention
    assert flops({"doc_lengths": lengths}) == pytest.approx(expected)


@pytest.mark.parametrize("overrides, match", [
    (["optim.lora.rank=-1"], r"^optim\.lora\.rank must be >= 1 \(0: no LoRA\), got -1$"),
    (["optim.lora={rank:4,dropout:1.0}"], "dropout must be in"),
    (["trainer.export_adapter=true"], "needs LoRA: set optim.lora.rank=16"),
    (["optim.lora.alpha=16"], r"^optim\.lora\.alpha=16\.0 set but optim\.lora\.rank=0 \(LoRA off\); set optim\.lora\.rank=16"),
])
def test_lora_config_mistakes_are_one_clear_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        validate(compose_config(*overrides))


@pytest.mark.parametrize("overrides", [["optim.lora={rank:64,alpha:128}"], ["optim.lora.rank=64", "optim.lora.alpha=128"]])
def test_lora_config_composes_in_the_brace_and_the_dotted_form(overrides):
    rc = validate(compose_config(*overrides))
    assert rc.optim.lora.rank == 64 and rc.optim.lora.alpha == 128 and "down_proj" in rc.optim.lora.target_modules


@pytest.mark.parametrize("overrides", [[], ["optim.lora.rank=0"], ["optim.lora=null"]])
def test_lora_is_off_by_default_and_at_rank_zero(overrides):
    assert validate(compose_config(*overrides)).optim.lora is None


def test_the_yaml_lora_node_holds_the_typed_defaults():
    """conf/optim/adamw.yaml's optim.lora is LoraSettings() (what rank 0 = off compares against)."""
    assert OmegaConf.to_container(compose_config().optim.lora) == asdict(LoraSettings())
