"""A model family that lives only in tests/ (tests/unit/tiny_family/): registered by the test, its
preset composed like any other, asked for by the config checks and model=auto, and trained end to
end through the real run (compose -> validate -> build -> train -> checkpoint -> HF export)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from lmms_engine.config import validate
from lmms_engine.models import registry
from lmms_engine.train.app import run
from tests.conftest import compose_config
from tests.unit.tiny_family import FAMILY

FAMILY_CONF = Path(__file__).resolve().parent / "tiny_family" / "conf"
# Its presets are found like the built-in ones: one more config search path.
USE_FAMILY = (f"hydra.searchpath=[file://{FAMILY_CONF}]", "model=tiny_llama")


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(registry, "FAMILIES", dict(registry.FAMILIES))
    registry.register(FAMILY)
    return FAMILY


def test_the_registry_lists_the_entry_and_finds_it_by_target(registered):
    assert registry.FAMILIES["llama"] == FAMILY.builder
    assert registry.family_of(FAMILY.builder) is FAMILY
    assert FAMILY in registry.families()
    assert registry.default_family(frozenset()).name == "qwen2"  # built-in families come first


def test_the_config_checks_ask_the_entry(registered):
    with pytest.raises(ValueError, match="model=tiny_llama takes text only but data=demo_vl has images/video; use data=demo"):
        validate(compose_config(*USE_FAMILY, "data=demo_vl"))
    with pytest.raises(ValueError, match=r"parallel.compile=True is not supported for model._target_=tests.unit.tiny_family"
                                         r".build_tiny_llama yet \(the test family has not been tried with torch.compile\)"):
        validate(compose_config(*USE_FAMILY, "parallel.compile=true"))


def test_model_auto_builds_a_saved_checkpoint_with_the_family(registered, tmp_path):
    bundle = FAMILY.build(name="x", config=dict(compose_config(*USE_FAMILY).model.config))
    bundle.model.save_pretrained(tmp_path / "ckpt")
    bundle.tokenizer.save_pretrained(tmp_path / "ckpt")
    built = registry.build_auto("auto", str(tmp_path / "ckpt"))
    assert type(built.model).__name__ == "LlamaForCausalLM" and built.decoder_units == bundle.decoder_units


def test_the_family_trains_end_to_end_and_exports(registered, tmp_path):
    cfg = compose_config(*USE_FAMILY, "trainer.max_steps=3", f"data.cache_dir={tmp_path / 'cache'}")
    run_dir = run(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["tokens"] > 0 and r["loss"] > 0 for r in rows)  # (mfu: null on a CPU, no known peak)
    exported = AutoModelForCausalLM.from_pretrained(run_dir / "hf")
    assert exported.config.model_type == "llama" and exported.config.num_hidden_layers == 2
