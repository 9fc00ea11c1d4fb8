"""LoRA on 2 gloo ranks against one process, through the real entry point (`torchrun train.py
parallel=X optim.lora=...`): the same losses (the adapters start alike on every rank and strategy),
checkpoints with the adapters only, an exact resume, and the same merged export.

The default run is fsdp2 (one torchrun); the other strategies and the resumes are slow.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader

from tests.distributed.test_strategies import STEPS, losses, needs_deepspeed, torchrun, train_single

pytestmark = pytest.mark.distributed

LORA = ["model=tiny", "data=demo", "optim.lora={rank:4,alpha:8}", "optim.lr=1e-2"]
TINY_PARAMS = 3_094_784  # model=tiny, whole (the LoRA adapters add 74,752 at rank 4)


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("token_cache")


@pytest.fixture(scope="module")
def single_lora(tmp_path_factory, token_cache):
    """One process with twice the accumulation: the same micro-batches per step as 2 ranks."""
    return train_single(tmp_path_factory.mktemp("single") / "run", token_cache, *LORA, "trainer.grad_accum=2",
                        "trainer.export_hf=true")


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, token_cache):
    runs = {}

    def get(parallel: str, *overrides: str):
        key = (parallel, *overrides)
        if key not in runs:
            runs[key] = torchrun(tmp_path_factory.mktemp(parallel), token_cache, f"parallel={parallel}", *LORA, *overrides)
        return runs[key]

    return get


def _check_matches_single(parallel: str, single_lora, lora_runs, *overrides: str) -> None:
    got, reference = losses(lora_runs(parallel, *overrides)), losses(single_lora)
    assert len(got) == STEPS
    assert got == pytest.approx(reference, rel=1e-5), f"LoRA under {parallel} diverges from one process"


def _checkpoint_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_fsdp2_lora_matches_single_process_and_checkpoints_the_adapters_only(single_lora, lora_runs):
    _check_matches_single("fsdp2", single_lora, lora_runs)
    step = lora_runs("fsdp2") / "checkpoints" / "step_3"
    keys = FileSystemReader(str(step)).read_metadata().state_dict_metadata
    weights = [k for k in keys if k.startswith("model.")]
    # lm_head: the tied embedding's second name, which torch's ignore_frozen_params does not see
    assert weights and all(".lora_" in k or k == "model.lm.lm_head.weight" for k in weights)
    # Adapters + their Adam moments + the tied head: well under the fp32 weights alone of the full model.
    assert _checkpoint_bytes(step) < 0.25 * 4 * TINY_PARAMS


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", pytest.param("zero2", marks=needs_deepspeed),
                                      pytest.param("zero3", marks=needs_deepspeed)])
def test_lora_under_other_strategies_matches_single_process(parallel, single_lora, lora_runs):
    _check_matches_single(parallel, single_lora, lora_runs)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["fsdp2", pytest.param("zero3", marks=needs_deepspeed)])
def test_lora_with_activation_checkpointing_matches_single_process(parallel, single_lora, lora_runs):
    """Checkpointed layers whose input (the frozen embedding's output) needs no gradient."""
    _check_matches_single(parallel, single_lora, lora_runs, "parallel.activation_checkpointing=true")


@needs_deepspeed
@pytest.mark.slow
def test_zero3_lora_checkpoint_holds_the_adapters_only(lora_runs):
    step = lora_runs("zero3") / "checkpoints" / "step_3"
    for states in (step / "deepspeed").glob("*model_states.pt"):
        module = torch.load(states, map_location="cpu", weights_only=False)["module"]
        # lm_head: the tied embedding's second name (an empty ZeRO-3 placeholder), as with DCP
        assert module and all(".lora_" in k or k == "lm.lm_head.weight" for k in module), sorted(module)[:5]
    assert _checkpoint_bytes(step) < 0.25 * 4 * TINY_PARAMS


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["fsdp2", pytest.param("zero3", marks=needs_deepspeed)])
def test_lora_resume_is_exact(parallel, lora_runs, tmp_path, token_cache):
    reference = lora_runs(parallel)
    resumed = torchrun(tmp_path, token_cache, f"parallel={parallel}", *LORA,
                       f"trainer.resume={reference / 'checkpoints' / 'step_3'}")
    assert losses(resumed) == losses(reference)[3:]


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["fsdp2", pytest.param("zero3", marks=needs_deepspeed)])
def test_distributed_merged_export_equals_single_process_export(parallel, single_lora, lora_runs):
    """Gathered across ranks and merged (W + scaling * B @ A): the single process's weights, which
    tests/e2e/test_lora_run.py shows give the trained model's logits."""
    got = load_file(lora_runs(parallel) / "hf" / "model.safetensors")
    expected = load_file(single_lora / "hf" / "model.safetensors")
    assert sorted(got) == sorted(expected) and not any("lora" in k for k in got)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-5, rtol=1e-4, msg=name)
