"""The original engine's config schema: translation into this framework's overrides, key by key."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from omegaconf import OmegaConf

from lmms_engine.config import validate
from lmms_engine.launch.cli import legacy_translation
from lmms_engine.launch.legacy import LegacyConfigError, hydra_value, is_legacy, translate
from tests.conftest import REPO, compose_config
from tests.legacy_config import HAND_WRITTEN, ISSUE_CONFIG


def _issue_config(**changes) -> dict:
    """The issue's config with `section={key: value}` changes (None deletes the key)."""
    node = yaml.safe_load(ISSUE_CONFIG)
    for section, values in changes.items():
        for key, value in values.items():
            if value is None:
                node[section].pop(key, None)
            else:
                node[section][key] = value
    return node


def _compose(overrides: list[str]):
    return compose_config(*overrides, shrink=False)


def test_schema_is_detected_by_its_top_level_sections():
    assert is_legacy(yaml.safe_load(ISSUE_CONFIG))
    assert not is_legacy({"model": {"pretrained": "x"}, "trainer": {"max_steps": 3}})


def test_issue_config_composes_to_the_hand_written_command(tmp_path):
    translation = translate(yaml.safe_load(ISSUE_CONFIG), tmp_path)
    translated = _compose(translation.overrides)
    dataset_yaml = translated.data.dataset_path
    hand = _compose([*HAND_WRITTEN, f"data.dataset_path={dataset_yaml}"])
    assert OmegaConf.to_yaml(translated) == OmegaConf.to_yaml(hand)  # what `--cfg job` prints
    assert yaml.safe_load(open(dataset_yaml)) == {
        "datasets": [{"path": "data/open_thoughts_debug", "data_folder": "", "data_type": "arrow"}]}
    rc = validate(translated)
    assert (rc.trainer.epochs, rc.trainer.max_steps, rc.optim.warmup_steps, rc.optim.warmup_ratio) == (1, None, 0, None)
    assert translation.parallel == "fsdp2" and translation.multi_process


def test_issue_config_warns_once_per_key_without_counterpart(tmp_path):
    warnings = translate(yaml.safe_load(ISSUE_CONFIG), tmp_path).warnings
    assert [w.split(":")[0] for w in warnings] == [
        "trainer_args.fsdp_config.transformer_layer_cls_to_wrap", "dataset_config.processor_config.processor_type",
        "dataset_config.packing_strategy"]


def test_inline_datasets_file_is_the_same_for_the_same_list(tmp_path):
    first = translate(yaml.safe_load(ISSUE_CONFIG), tmp_path).overrides
    assert translate(yaml.safe_load(ISSUE_CONFIG), tmp_path).overrides == first
    assert len(list((tmp_path / "legacy_datasets").iterdir())) == 1


@pytest.mark.parametrize(("section", "key", "value", "fragment"), [
    ("trainer_args", "group_by_length", True, "moot with packing"),
    ("trainer_args", "logging_dir", "./logs", "ignored"),
    ("trainer_args", "eval_strategy", "steps", "no evaluation loop"),
    ("trainer_args", "report_to", ["wandb", "tensorboard"], "'tensorboard' is not supported"),
    ("trainer_args", "save_strategy", "epoch", "every save_steps"),
    ("trainer_args", "per_device_train_batch_size", 4, "trainer.grad_accum=4"),
    ("dataset_config", "filter_overlong", False, "truncated"),
    ("dataset_config", "video_backend", "decord", "ignored"),
    ("model_config", "torch_dtype", "bfloat16", "fp32 master weights"),
    ("model_config", "attn_implementation", "eager", "runs as sdpa"),
])
def test_harmless_keys_get_one_warning(section, key, value, fragment, tmp_path):
    warnings = translate(_issue_config(**{section: {key: value}}), tmp_path).warnings
    mine = [w for w in warnings if w.startswith(f"{section}.{key}")]
    assert len(mine) == 1 and fragment in mine[0], warnings


@pytest.mark.parametrize(("section", "key", "value", "fragment"), [
    ("trainer_args", "lr_scheduler_type", "polynomial", "'polynomial' has no counterpart; supported: cosine"),
    ("trainer_args", "optim", "adafactor", "the optimizer is AdamW"),
    ("trainer_args", "fp16", True, "use bf16"),
    ("trainer_args", "num_train_epochs", 1.5, "only whole epochs"),
    ("trainer_args", "freeze_modules", ["vision_tower"], "['vision_tower'] have no counterpart"),
    ("trainer_args", "label_smoothing_factor", 0.1, "no counterpart"),
    ("trainer_args", "resume_from_checkpoint", True, "give the checkpoint or run directory"),
    ("trainer_args", "sp_ulysses_degree", 2, "sequence parallelism"),
    ("trainer_args", "lr_scheduler_kwargs", {"power": 2}, "no counterpart for cosine"),
    ("dataset_config", "dataset_type", "fineweb_edu", "supported: vision, vision_iterable"),
    ("dataset_config", "video_sampling_strategy", "frame_num", "sampled by fps"),
    ("dataset_config", "extra_kwargs", {"a": 1}, "no counterpart"),
    ("model_config", "attn_implementation", "flex_attention", "use flash_attention_2, sdpa or eager"),
    ("model_config", "load_from_pretrained_path", None, "required"),
    ("model_config", "overwrite_config", {"a": 1}, "no counterpart"),
])
def test_keys_that_would_change_the_training_are_errors(section, key, value, fragment, tmp_path):
    node = _issue_config(**{section: {key: value}})
    with pytest.raises(LegacyConfigError) as err:
        translate(node, tmp_path)
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{section}.{key}") and fragment in lines[0], lines


def test_unsupported_trainer_type_is_an_error(tmp_path):
    node = yaml.safe_load(ISSUE_CONFIG) | {"trainer_type": "dllm_trainer"}
    with pytest.raises(LegacyConfigError, match=r"^trainer_type: 'dllm_trainer' is not supported; use one of "
                                                r"fsdp2_trainer, hf_trainer$"):
        translate(node, tmp_path)


def test_every_error_is_reported_at_once(tmp_path):
    node = _issue_config(trainer_args={"fp16": True, "optim": "sgd"}, dataset_config={"shuffle_buffer": 3})
    with pytest.raises(LegacyConfigError) as err:
        translate(node, tmp_path)
    assert [line.split(":")[0] for line in str(err.value).splitlines()] == [
        "dataset_config.shuffle_buffer", "trainer_args.fp16", "trainer_args.optim"]


def test_hf_trainer_with_a_deepspeed_json_is_zero_with_its_offload(tmp_path):
    ds = tmp_path / "zero3.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}},
                              "bf16": {"enabled": "auto"}}))
    node = _issue_config(trainer_args={"fsdp2": None, "fsdp_config": None, "deepspeed": str(ds)})
    node["trainer_type"] = "hf_trainer"
    translation = translate(node, tmp_path)
    assert "parallel=zero3" in translation.overrides and "parallel.offload_optimizer=true" in translation.overrides
    assert any(w.startswith("trainer_args.deepspeed: only zero_optimization.stage") for w in translation.warnings)
    assert validate(_compose(translation.overrides)).groups["parallel"].stage == 3


def test_hf_trainer_without_fsdp_or_deepspeed_is_ddp(tmp_path):
    node = _issue_config(trainer_args={"fsdp2": None, "fsdp_config": None})
    node["trainer_type"] = "hf_trainer"
    assert "parallel=ddp" in translate(node, tmp_path).overrides


def test_absent_training_keys_take_the_hugging_face_defaults(tmp_path):
    node = yaml.safe_load(ISSUE_CONFIG)
    for key in ("learning_rate", "num_train_epochs", "lr_scheduler_type", "warmup_ratio", "save_steps", "logging_steps"):
        del node["trainer_args"][key]
    rc = validate(_compose(translate(node, tmp_path).overrides))
    assert (rc.optim.lr, rc.optim.schedule, rc.optim.min_lr_ratio, rc.optim.betas) == (5e-5, "linear", 0.0, [0.9, 0.999])
    assert (rc.trainer.epochs, rc.trainer.save_every, rc.trainer.log_every, rc.trainer.seed) == (3, 500, 500, 42)


@pytest.mark.parametrize(("args", "max_steps", "epochs", "warmup_steps", "warmup_ratio"), [
    ({"max_steps": 50, "warmup_ratio": 0.1}, 50, None, None, 0.1),  # transformers: max_steps > 0 wins over epochs
    ({"num_train_epochs": 2, "warmup_steps": 7}, None, 2, 7, None),
    ({"warmup_steps": 0.05}, None, 1, None, 0.05),  # a warmup_steps below 1 is a ratio
])
def test_run_length_and_warmup(args, max_steps, epochs, warmup_steps, warmup_ratio, tmp_path):
    rc = validate(_compose(translate(_issue_config(trainer_args=args), tmp_path).overrides))
    assert (rc.trainer.max_steps, rc.trainer.epochs) == (max_steps, epochs)
    assert (rc.optim.warmup_steps, rc.optim.warmup_ratio) == (warmup_steps, warmup_ratio)


def test_cosine_with_min_lr_keeps_its_floor(tmp_path):
    node = _issue_config(trainer_args={"lr_scheduler_type": "cosine_with_min_lr",
                                       "lr_scheduler_kwargs": {"min_lr": 1e-7}})
    rc = validate(_compose(translate(node, tmp_path).overrides))
    assert rc.optim.schedule == "cosine" and rc.optim.min_lr_ratio == pytest.approx(0.1)


def test_without_packing_the_batch_size_is_the_micro_batch(tmp_path):
    node = _issue_config(dataset_config={"packing": False}, trainer_args={"per_device_train_batch_size": 4,
                                                                         "gradient_accumulation_steps": 2})
    cfg = _compose(translate(node, tmp_path).overrides)
    assert (cfg.data.packing, cfg.data.micro_batch_size, cfg.trainer.grad_accum) == (False, 4, 2)


def test_audio_and_projector_freeze_names(tmp_path):
    node = _issue_config(trainer_args={"freeze_modules": ["audio_tower", "multi_modal_projector"]})
    assert "optim.freeze=[audio,projector]" in translate(node, tmp_path).overrides


@pytest.mark.parametrize("value", ["plain/path-1.0", "with space", "it's", "123", "true", "a=b,c", "[a]"])
def test_string_values_survive_hydra_parsing(value):
    cfg = compose_config(f"name={hydra_value(value)}", shrink=False)
    assert OmegaConf.to_container(cfg)["name"] == value


def test_mixed_schema_is_refused(tmp_path):
    node = copy.deepcopy(yaml.safe_load(ISSUE_CONFIG)) | {"optim": {"lr": 1.0}}
    with pytest.raises(LegacyConfigError, match=r"^optim: not a key of the original schema"):
        translate(node, tmp_path)


def test_shipped_original_engine_example_is_the_issue_config(tmp_path):
    shipped = yaml.safe_load((REPO / "examples" / "load_from_pretrained_example.yaml").read_text())
    assert shipped == yaml.safe_load(ISSUE_CONFIG)
    assert translate(shipped, tmp_path).parallel == "fsdp2"


def test_adam_betas_and_epsilon(tmp_path):
    node = _issue_config(trainer_args={"adam_beta1": 0.8, "adam_beta2": 0.95, "adam_epsilon": 1e-6})
    rc = validate(_compose(translate(node, tmp_path).overrides))
    assert (rc.optim.betas, rc.optim.eps) == ([0.8, 0.95], 1e-6)


def test_a_framework_experiment_with_interpolations_is_not_taken_for_the_original_schema(tmp_path):
    config = tmp_path / "experiment.yaml"
    config.write_text("name: ${model.name}_sft\ntrainer: {max_steps: 3}\n")  # resolvable only once composed
    assert legacy_translation(config) is None
