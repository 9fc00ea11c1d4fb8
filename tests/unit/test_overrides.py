"""A command-line override of a key (or group option) that does not exist gets the framework's one line
with the closest valid names, not Hydra's "use +key=" (which suggests the wrong fix) or its 34-line listing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lmms_engine.overrides import check_cli_overrides
from tests.conftest import REPO

UNKNOWN = [
    (["trainer.max_stpes=3"], r"^unknown key trainer\.max_stpes \(did you mean trainer\.max_steps\?\); "
                              r"valid keys of trainer: max_steps, epochs, seed, "),
    (["use_rmpad=true"], r"^unknown top-level key\(s\) use_rmpad \(did you mean kernels\.use_rmpad\?\); valid: name, "),
    (["trainr.max_steps=3"], r"^unknown top-level key\(s\) trainr \(did you mean trainer\?\)"),
    (["model=tiny", "data=demo", "data.packing_lenght=4"], r"^unknown key data\.packing_lenght \(did you mean data\.packing_length\?\)"),
    (["-m", "optim.lr=1e-5,2e-5", "optim.lrr=3"], r"^unknown key optim\.lrr \(did you mean optim\.lr\?\)"),
    (["--cfg", "job", "kernels.use_rmpd=true"], r"^unknown key kernels\.use_rmpd \(did you mean kernels\.use_rmpad\?\)"),
    (["logger=wandb", "logger.wandb.projcet=x"], r"^unknown key logger\.wandb\.projcet \(did you mean logger\.wandb\.project\?\); "
                                                r"valid keys of logger\.wandb: project, name, entity, mode, tags, group$"),
    (["data.zzz=1"], r"^unknown key data\.zzz; valid keys of data: dataset_path, "),  # nothing close: no guess
    (["logger.wandb.project=x"], r"^logger\.wandb\.project: logger\.wandb is null in this run \(logger=default does not log "
                                 r"to Weights & Biases\); add logger=wandb to the command line$"),
    (["model=qwen2", "model.config.hidden_size=8"], r"^model\.config\.hidden_size: model\.config is null in this run, so it "
                                                    r"has no keys to set; set it whole: model\.config=\{hidden_size:\.\.\.\}$"),
    (["model=tiny_qwen25"], r"^unknown option model=tiny_qwen25 \(did you mean model=tiny_qwen3 or model=tiny_qwen2_5_vl or "
                            r"model=tiny_qwen3_vl\?\); options of model \(conf/model/\): auto, omni_7b, "),
    (["-m", "parallel=fsdp2,zero9"], r"^unknown option parallel=zero9 \(did you mean parallel=zero3 or parallel=zero2 or "
                                     r"parallel=zero1\?\); options of parallel \(conf/parallel/\): ddp, fsdp2, single, "),
    (["model=nope", "trainer.x=1"], r"^unknown option model=nope; options of model"),  # nothing close: no guess
]


@pytest.mark.parametrize("argv,message", UNKNOWN, ids=[" ".join(a) for a, _ in UNKNOWN])
def test_unknown_key_names_the_closest_valid_keys(argv, message):
    with pytest.raises(ValueError, match=message):
        check_cli_overrides(argv)


@pytest.mark.parametrize("argv", [
    ["trainer.max_steps=3", "model=tiny", "data=demo"],
    ["+trainer.foo=1"],  # an explicit add is validate's to refuse
    ["experiment=null", "hydra/launcher=submitit_local"],  # no option chosen; Hydra's own groups are Hydra's
    ["hydra.run.dir=/tmp/x", "hydra/launcher=submitit_local", "optim.lr=1"],
    ["data.video_fps=1"],  # a key of the default VL data option
    ["optim.lora.rank=8", "optim.lora.alpha=16", "optim.component_lr.lm=1e-4"],  # nested keys in the dotted form
    ["-m", "data=demo,demo_vl", "data.video_fps=1"],  # under a swept group: left to each job
    ["optim.lr=[bad"],  # a syntax error: Hydra points at it
    ["--config-name", "other", "foo.bar=1"],  # another primary config: its keys are Hydra's to check
])
def test_known_or_foreign_overrides_pass(argv):
    check_cli_overrides(argv)


def test_lmms_train_exits_with_the_one_line(tmp_path):
    env = {**os.environ, "LMMS_ENGINE_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", "from lmms_engine.train import main; main()", "trainer.max_stpes=3",
                             f"output_root={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("ERROR    unknown key trainer.max_stpes (did you mean trainer.max_steps?)")
    assert "+trainer" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir()) or list(tmp_path.iterdir()) == [tmp_path / "cache"]  # no run directory
