"""Config composition and validation: every mistake names the key and the valid choices."""

from __future__ import annotations

import pytest
from hydra.errors import MissingConfigException
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


def test_unknown_trainer_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"trainer\.bogus.*valid keys of trainer: max_steps"):
        validate(compose_config("+trainer.bogus=1"))


def test_unknown_target_group_key_names_the_builder():
    with pytest.raises(ValueError, match=r"data\.packing_len .*build_sft_dataset.*packing_length"):
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
