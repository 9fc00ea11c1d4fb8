"""train/preflight.py: the command line is checked before Hydra composes the run and before torch,
transformers and DeepSpeed are imported, so a mistake answers in seconds with one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmms_engine.train.preflight import prepare_argv
from tests.conftest import REPO

MISTAKES = {
    "wrong key": (["trainer.max_stpes=3"], "ERROR    unknown key trainer.max_stpes (did you mean trainer.max_steps?); "),
    "wrong option": (["model=tiny_qwen25"], "ERROR    unknown option model=tiny_qwen25 (did you mean model=tiny_qwen3 or "),
    "bad lr": (["optim.lr=-1"], "ERROR    optim.lr=-1.0 is out of range; it must be > 0"),
    "missing file": (["data.dataset_path=nope.yaml"], "ERROR    data.dataset_path='nope.yaml': no such file or folder "),
    "missing checkpoint": (["model=tiny", "data=demo", "model.pretrained=/nope/ckpt"],
                           "ERROR    model.pretrained='/nope/ckpt': no such local directory "),
    "hub id offline": (["model=tiny", "data=demo", "model.pretrained=Qwen/Not-A-Model"],
                       "ERROR    model.pretrained='Qwen/Not-A-Model': not a local directory, so looked up on the Hugging "
                       "Face hub, but HF_HUB_OFFLINE=1 and it is not in the local hub cache ("),
    "required key": (["model=auto"], "ERROR    model.pretrained must be set (the chosen option leaves it ???): "
                                     "add model.pretrained=... to the command line"),
}


def _python(code: str, *args: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LMMS_ENGINE_CACHE": str(tmp_path / "c"),
                               "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_a_mistake_answers_in_one_line_before_anything_is_written(case, tmp_path):
    argv, expected = MISTAKES[case]
    result = _python("from lmms_engine.train import main; main()", *argv, f"output_root={tmp_path / 'out'}",
                     tmp_path=tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(expected), line
    assert not (tmp_path / "out").exists()  # no run directory


def test_the_checks_import_neither_torch_nor_transformers(tmp_path):
    code = ("import sys; from lmms_engine.train.preflight import prepare_argv; "
            "prepare_argv(['model=tiny', 'data=demo', 'parallel=zero2', 'kernels=liger_rmpad', 'optim.lr=1e-4']); "
            "print(sorted(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules))")
    result = _python(code, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_dataset_yamls_missing_source_is_named_with_the_yaml(tmp_path):
    dataset_yaml = tmp_path / "mix.yaml"
    dataset_yaml.write_text("datasets:\n  - path: gone.jsonl\n    data_type: jsonl\n")
    with pytest.raises(ValueError, match=r"mix\.yaml.*source 'gone\.jsonl' does not exist"):
        prepare_argv(["model=tiny", "data=sft", f"data.dataset_path={dataset_yaml}"])


@pytest.mark.parametrize("argv", [["--cfg", "job", "optim.lr=-1"], ["-m", "optim.lr=-1,1e-4"]])
def test_commands_that_train_nothing_here_are_left_to_hydra(argv):
    assert prepare_argv(argv) == argv  # --cfg prints the config; each job of a multirun checks its own
