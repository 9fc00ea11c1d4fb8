"""Config composition and validation: every mistake names the key and the valid choices."""

from __future__ import annotations

import re

import pytest
import torch
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lmms_engine.config import validate
from lmms_engine.launch.cli import load_experiment
from lmms_engine.train.schedule import lr_at
from tests.conftest import REPO, compose_config


def test_default_config_validates():
    rc = validate(compose_config(shrink=False))
    assert rc.trainer.max_steps == 120 and rc.optim.schedule == "cosine"
    assert rc.groups["model"]._target_ == "lmms_engine.models.qwen2_5_vl.build_qwen2_5_vl"
    assert rc.groups["data"].dataset_path.endswith("demo_vl.yaml")


def test_unknown_freeze_component_is_a_config_error(tmp_path):
    from lmms_engine.train.app import run

    with pytest.raises(ValueError, match=r"optim.freeze: unknown component\(s\) tower; this model has lm, vision, merger"):
        run(compose_config("optim.freeze=[tower]", f"data.cache_dir={tmp_path}", vl=True), tmp_path / "run")


@pytest.mark.parametrize("overrides", [["optim.component_lr.vision=2e-6"], ["optim.component_lr={vision:2e-6}"]])
def test_component_lr_in_the_dotted_and_the_brace_form(overrides):
    assert validate(compose_config(*overrides, vl=True)).optim.component_lr == {"vision": 2e-6}
    assert validate(compose_config()).optim.component_lr is None  # all null: every component at optim.lr


def test_component_lr_node_names_every_component_of_every_family():
    """optim.component_lr.<component>=X needs the key in conf/optim/adamw.yaml (Hydra adds no key without +)."""
    components = {"lm"}
    for model in ("tiny", "tiny_qwen2_5_vl", "tiny_qwen3_vl", "tiny_qwen2_audio", "tiny_omni"):
        with torch.device("meta"):
            bundle = instantiate(compose_config(f"model={model}").model, _convert_="all", structure_only=True)
        components |= set(bundle.components())
    assert set(compose_config().optim.component_lr) == components


@pytest.mark.parametrize("model,data,fix", [
    ("tiny", "demo_vl", "model=tiny takes text only but data=demo_vl has images/video; use data=demo"),
    ("tiny_qwen3", "demo_audio", "model=tiny_qwen3 takes text only but data=demo_audio has audio; use data=demo"),
    ("tiny_qwen2_audio", "demo_vl", "model=tiny_qwen2_audio takes text and audio but data=demo_vl has images/video; "
                                    "use data=demo_audio"),
])
def test_demo_data_with_media_the_model_does_not_take_names_the_fix(model, data, fix):
    with pytest.raises(ValueError, match=f"^{re.escape(fix)}$"):
        validate(compose_config(f"model={model}", f"data={data}", shrink=False))


@pytest.mark.parametrize("model,data", [("tiny", "demo"), ("tiny_qwen2_5_vl", "demo"), ("tiny_omni", "demo_vl"),
                                        ("tiny_qwen3_vl", "demo_vl")])
def test_demo_data_the_model_takes_validates(model, data):
    validate(compose_config(f"model={model}", f"data={data}", shrink=False))


def test_unknown_trainer_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"trainer\.bogus.*valid keys of trainer: max_steps"):
        validate(compose_config("+trainer.bogus=1"))


def test_unknown_target_group_key_names_the_builder():
    with pytest.raises(ValueError, match=r"data\.packing_len .*DataSettings.*packing_length"):
        validate(compose_config("+data.packing_len=3"))


def test_wrong_type_is_reported():
    with pytest.raises(ValueError, match="trainer"):
        validate(compose_config("trainer.max_steps=many"))


def test_unknown_top_level_key():
    with pytest.raises(ValueError, match="unknown top-level key.*use_flash"):
        validate(compose_config("+use_flash=true"))


def test_unknown_group_option_lists_available_ones():
    with pytest.raises(MissingConfigException, match=r"(?s)Could not find 'model/nope'.*qwen2_5_1_5b"):
        compose_config("model=nope")


@pytest.mark.parametrize("schedule", ["constant", "cosine", "wsd"])
def test_schedules_warm_up_then_follow_their_shape(schedule):
    lrs = [lr_at(s, lr=1.0, schedule=schedule, warmup_steps=10, max_steps=100, min_lr_ratio=0.1, decay_ratio=0.2)
           for s in range(1, 101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    expected_last = {"constant": 1.0, "cosine": 0.1, "wsd": 0.1}[schedule]
    assert lrs[-1] == pytest.approx(expected_last)
    if schedule == "wsd":
        assert lrs[79] == pytest.approx(1.0) and lrs[89] == pytest.approx(0.55)
    if schedule == "cosine":
        assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="optim.schedule='polynomial'"):
        lr_at(1, lr=1.0, schedule="polynomial", warmup_steps=0, max_steps=10, min_lr_ratio=0.1, decay_ratio=0.2)


def test_seed_switches_map_to_kernels():
    node = load_experiment(REPO / "examples" / "qwen2_5_1_5b_sft.yaml")
    assert "use_liger_kernel" not in node and node.kernels.use_liger_kernel is True and node.kernels.use_rmpad is True
    assert OmegaConf.to_container(node)["defaults"][0] == {"override /model": "qwen2_5_1_5b"}


def test_shipped_experiment_composes_and_validates():
    rc = validate(compose_config("experiment=qwen_1_5b_sft", shrink=False))
    assert rc.groups["parallel"]._target_ == "lmms_engine.parallel.fsdp2.FSDP2"
    assert rc.groups["kernels"].use_liger_kernel is True and rc.groups["data"].packing_length == 16384
    assert rc.groups["model"].pretrained == "Qwen/Qwen2.5-1.5B-Instruct" and rc.optim.lr == 1e-5


def test_vl_example_maps_the_seed_switches_and_keeps_vl_keys():
    node = load_experiment(REPO / "examples" / "qwen2_5_vl_7b_sft.yaml")
    assert node.kernels.use_liger_kernel is True and node.kernels.use_rmpad is True
    assert OmegaConf.to_container(node)["defaults"][0] == {"override /model": "qwen2_5_vl"}
    assert list(node.optim.freeze) == ["vision"] and node.data.image_max_pixels == 1280 * 28 * 28
