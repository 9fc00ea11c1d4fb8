"""Ulysses sequence parallelism (parallel.sp_degree) against the single-process reference, over gloo.

Each case runs tests/distributed/sp_probe.py under torchrun: one optimizer step of FSDP2 with SP on
the demo data's packed micro-batches (grad_accum 2 per data replica), against the plain model on all
of them in one process. SGD at lr 1 makes the parameter change the gradient, so equal parameters
after the step mean equal gradients (fp32, 1e-5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.distributed.sp_probe import GRAD_ACCUM
from tests.distributed.test_strategies import losses, only_run_dir

pytestmark = pytest.mark.distributed

TIMEOUT_S = 540
TEXT = ["model=tiny", "data=demo"]


def run_probe(out: Path, token_cache: Path, nproc: int, sp: int, vl: bool, overrides: tuple[str, ...] = ()) -> dict:
    args = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "tests/distributed/sp_probe.py", str(out), str(sp), *(["vl"] if vl else TEXT), *overrides]
    env = dict(os.environ, LMMS_ENGINE_CACHE=str(token_cache))
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        pytest.fail(f"sp probe exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}")
    return json.loads((out / "report.json").read_text())


def assert_matches_single_process(report: dict, world: int, sp: int) -> None:
    assert (report["world_size"], report["sp_degree"]) == (world, sp)
    assert report["label_tokens"] == report["ref_label_tokens"] > 0
    assert report["loss"] == pytest.approx(report["ref_loss"], abs=1e-5)
    assert report["ref_grad_norm"] > 1.0  # the step changes the weights: the comparison below means something
    assert report["grad_norm"] == pytest.approx(report["ref_grad_norm"], abs=1e-4)
    assert report["params_missing"] == [] and report["params_compared"] > 10
    assert report["max_param_diff"] < 1e-5


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token_cache")


def test_text_sp2_matches_single_process(tmp_path, token_cache):
    report = run_probe(tmp_path, token_cache, nproc=2, sp=2, vl=False)
    assert any(length % 2 for length in report["pack_lengths"])  # a pack padded to whole shards
    assert_matches_single_process(report, world=2, sp=2)


OFFLOAD = ("parallel.activation_checkpointing=true", "parallel.offload_activations=true")
TINY_LAYERS = 4  # conf/model/tiny.yaml and tiny_qwen2_5_vl.yaml's text model


def assert_offloaded_step_matches(report: dict, sp: int) -> None:
    """Every layer input of every micro-batch went out and came back, and the step is the reference's."""
    assert report["offloaded_tensors"] == report["restored_tensors"] == TINY_LAYERS * GRAD_ACCUM
    assert_matches_single_process(report, world=2, sp=sp)


def test_text_sp2_with_activation_offload_matches_single_process(tmp_path, token_cache):
    """FSDP2 + Ulysses + checkpointed layers whose inputs go through the offloader: the same step."""
    assert_offloaded_step_matches(run_probe(tmp_path, token_cache, nproc=2, sp=2, vl=False, overrides=OFFLOAD), sp=2)


@pytest.mark.slow
def test_data_parallel_fsdp2_with_activation_offload_matches_single_process(tmp_path, token_cache):
    assert_offloaded_step_matches(run_probe(tmp_path, token_cache, nproc=2, sp=1, vl=False, overrides=OFFLOAD), sp=1)


@pytest.mark.slow
def test_vl_sp2_with_activation_offload_matches_single_process(tmp_path, token_cache):
    """Qwen2.5-VL (images and a video): the decoder layers' inputs offloaded, the vision blocks' kept."""
    assert_offloaded_step_matches(run_probe(tmp_path, token_cache, nproc=2, sp=2, vl=True, overrides=OFFLOAD), sp=2)


@pytest.mark.slow
def test_vl_sp2_matches_single_process(tmp_path, token_cache):
    assert_matches_single_process(run_probe(tmp_path, token_cache, nproc=2, sp=2, vl=True), world=2, sp=2)


@pytest.mark.slow
@pytest.mark.parametrize("vl", [False, True], ids=["text", "vl"])
def test_sp2_times_dp2_matches_single_process(tmp_path, token_cache, vl):
    assert_matches_single_process(run_probe(tmp_path, token_cache, nproc=4, sp=2, vl=vl), world=4, sp=2)


def _train(args: list[str], token_cache: Path) -> None:
    env = dict(os.environ, LMMS_ENGINE_CACHE=str(token_cache))
    env.pop("LMMS_RUN_STAMP", None)
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        pytest.fail(f"`{' '.join(args[1:])}` exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}")


@pytest.mark.slow
def test_resume_with_another_sp_degree(tmp_path, token_cache):
    """sp_degree=2 on 2 ranks checkpoints at step 3; sp_degree=1 on 1 rank (the same one data replica,
    so the same micro-batches per step) resumes it: DCP reshards, and steps 4-5 give the same losses."""
    common = [*TEXT, "parallel=fsdp2", "parallel.device=cpu", "trainer.max_steps=5", "trainer.save_every=3",
              "trainer.export_hf=false", "data.packing_length=256", "optim.warmup_steps=0"]
    _train([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "train.py", *common,
            "parallel.sp_degree=2", f"output_root={tmp_path / 'sp2'}"], token_cache)
    sp2 = only_run_dir(tmp_path / "sp2")
    _train([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "train.py", *common,
            "parallel.sp_degree=1", f"trainer.resume={sp2 / 'checkpoints' / 'step_3'}",
            f"output_root={tmp_path / 'sp1'}"], token_cache)
    resumed = losses(only_run_dir(tmp_path / "sp1"))
    assert len(resumed) == 2
    assert resumed == pytest.approx(losses(sp2)[3:], abs=1e-5)
