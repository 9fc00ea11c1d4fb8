"""model=auto: the family is read from the checkpoint's config.json model_type."""

from __future__ import annotations

import json
import logging

import pytest
from hydra.utils import instantiate

from lmms_engine.config import validate
from lmms_engine.models import registry
from tests.conftest import compose_config
from tests.tiny_checkpoints import TINY_PRESETS, save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {preset: save_tiny_checkpoint(preset, root / preset) for preset in TINY_PRESETS}


@pytest.mark.parametrize("preset", sorted(TINY_PRESETS))
def test_model_auto_builds_the_family_of_each_checkpoint(preset, checkpoints, caplog):
    path = checkpoints[preset]
    cfg = compose_config("model=auto", f"model.pretrained={path}")
    rc = validate(cfg)
    assert rc.name == preset  # the run is named after the checkpoint folder
    with caplog.at_level(logging.INFO, logger="lmms_engine.models.registry"):
        bundle = instantiate(rc.groups["model"], _convert_="all")
    model_type = TINY_PRESETS[preset]
    assert bundle.model.config.model_type == model_type
    assert type(bundle.model).__name__ == type(instantiate(compose_config(f"model={preset}").model,
                                                           _convert_="all").model).__name__
    assert f"is a '{model_type}' checkpoint -> {registry.FAMILIES[model_type]}" in caplog.text


def test_model_processor_reaches_the_builder_as_its_tokenizer_or_processor(checkpoints, monkeypatch):
    calls = []

    def text_builder(name, pretrained, tokenizer=None, trust_remote_code=False, structure_only=False):
        calls.append(("text", tokenizer, structure_only))

    def vl_builder(name, pretrained, processor=None, config=None, trust_remote_code=False, structure_only=False):
        calls.append(("vl", processor, structure_only))

    monkeypatch.setattr("lmms_engine.models.qwen2.build_qwen2", text_builder)
    monkeypatch.setattr("lmms_engine.models.qwen2_5_vl.build_qwen2_5_vl", vl_builder)
    registry.build_auto("x", str(checkpoints["tiny"]), processor="some/tokenizer")
    registry.build_auto("x", str(checkpoints["tiny_qwen2_5_vl"]), processor="some/processor", structure_only=True)
    assert calls == [("text", "some/tokenizer", False), ("vl", "some/processor", True)]


def test_unsupported_model_type_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match=r"is a 'llama' checkpoint; model=auto supports lmms_omni, qwen2, qwen2_5_vl, "
                                         r"qwen2_audio"):
        registry.build_auto("x", str(tmp_path))


def test_folder_without_config_json_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"model.pretrained='.*': no readable config.json"):
        registry.build_auto("x", str(tmp_path))


def test_registering_a_family_makes_model_auto_use_it(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "FAMILIES", dict(registry.FAMILIES))
    registry.register_family("my_family", "lmms_engine.models.qwen2.build_qwen2")
    assert registry.builder_for("my_family", "p").__name__ == "build_qwen2"
    with pytest.raises(ValueError, match="already registered"):
        registry.register_family("my_family", "lmms_engine.models.omni.build_omni")
