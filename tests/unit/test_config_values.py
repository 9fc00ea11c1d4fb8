"""Values out of range or outside a fixed set of options are refused by `validate`, naming the full
key, before the strategy, model or data is built."""

from __future__ import annotations

import pytest

from lmms_engine.config import validate
from lmms_engine.train import app
from tests.conftest import compose_config

BAD_VALUES = [
    ("optim.lr=-1e-4", r"^optim\.lr=-0\.0001 is out of range; it must be > 0$"),
    ("data.micro_batch_size=0", r"^data\.micro_batch_size=0 is out of range; it must be >= 1$"),
    ("data.packing_length=-5", r"^data\.packing_length=-5 is out of range; it must be >= 1$"),
    ("trainer.grad_accum=0", r"^trainer\.grad_accum=0 is out of range; it must be >= 1$"),
    ("trainer.log_every=0", r"^trainer\.log_every=0 is out of range"),
    ("optim.min_lr_ratio=1.5", r"^optim\.min_lr_ratio=1\.5 is out of range; it must be in \[0, 1\]$"),
    ("optim.warmup_steps=-1", r"^optim\.warmup_steps=-1 is out of range; it must be >= 0$"),
    ("optim.betas=[0.9,1.0]", r"^optim\.betas\[1\]=1\.0 is out of range; it must be in \[0, 1\)$"),
    ("optim.component_lr={lm:0}", r"^optim\.component_lr\.lm=0"),
    ("optim.schedule=foo", r"^optim\.schedule='foo' is not a valid option; choose one of constant, cosine, linear, wsd$"),
    ("data.overlong=cut", r"^data\.overlong='cut' is not a valid option; choose one of drop, truncate$"),
    ("data.on_error=ignore", r"^data\.on_error='ignore' is not a valid option; choose one of raise, skip$"),
    ("kernels.attn_backend=flash", r"^kernels\.attn_backend='flash' is not a valid option; choose one of auto, fa4, flash_attn, "),
    ("parallel.precision=fp16", r"^parallel\.precision='fp16' is not a valid option; choose one of auto, bf16, fp32$"),
    ("parallel.activation_checkpointing=-2", r"^parallel\.activation_checkpointing=-2; use false, true or a positive"),
    ("parallel.encoder_checkpointing=2", r"^parallel\.encoder_checkpointing=2; use null"),
]


@pytest.mark.parametrize("override,message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_value_names_the_full_key(override, message):
    with pytest.raises(ValueError, match=message):
        validate(compose_config(override))


def test_vl_data_keys_are_checked_where_the_option_has_them():
    with pytest.raises(ValueError, match=r"^data\.video_fps=0 is out of range; it must be > 0$"):
        validate(compose_config("data.video_fps=0", vl=True))
    with pytest.raises(ValueError, match=r"^data\.video_min_frames=8 is larger than data\.video_max_frames=4$"):
        validate(compose_config("data.video_min_frames=8", "data.video_max_frames=4", vl=True))


def test_zero_stage_outside_the_known_stages():
    with pytest.raises(ValueError, match=r"^parallel\.stage=4 is not a valid option; choose one of 1, 2, 3$"):
        validate(compose_config("parallel=zero2", "parallel.stage=4"))


def test_valid_edge_values_pass():
    rc = validate(compose_config("optim.min_lr_ratio=0", "optim.decay_ratio=1", "trainer.save_every=0",
                                 "parallel.activation_checkpointing=2", "trainer.data_workers=0"))
    assert rc.optim.min_lr_ratio == 0 and rc.optim.decay_ratio == 1


@pytest.mark.parametrize("override,key", [("optim.lr=-1e-4", "optim.lr"), ("data.micro_batch_size=0", "data.micro_batch_size"),
                                          ("optim.schedule=foo", "optim.schedule"), ("data.overlong=cut", "data.overlong")])
def test_nothing_is_built_before_the_value_check(override, key, monkeypatch, tmp_path):
    built = []
    monkeypatch.setattr(app, "instantiate", lambda node, *a, **k: built.append(node._target_))
    with pytest.raises(ValueError, match=rf"^{key}="):
        app.run(compose_config(override), tmp_path / "run")
    assert built == [] and not (tmp_path / "run").exists()
