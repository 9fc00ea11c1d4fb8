"""Data-parallel strategies against the single-process reference, through the real entry point.

Each distributed run is `torchrun --nproc_per_node=2 train.py parallel=X` on CPU (gloo); the
reference is one process with twice the gradient accumulation, so both see the same micro-batches
in each step (StepBatches: step n takes grad_accum * world_size micro-batches, rank r every
world_size-th). Token-normalised losses must then agree to floating-point tolerance.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmms_engine.config import validate
from lmms_engine.parallel.deepspeed import DeepSpeedZero, deepspeed_config
from tests.conftest import REPO, compose_config

STEPS = 5
# The tiny text model ties lm_head to the embeddings, and ZeRO-3 keeps parameters under 1e5
# elements whole on every rank: untie it and partition everything so the loss's lm_head read is exercised.
TINY_TEXT = ["model=tiny", "data=demo"]
ZERO3_UNTIED = [*TINY_TEXT, "model.config.tie_word_embeddings=false", "parallel.param_persistence_threshold=0"]
# Small, CPU-only, and a checkpoint mid-run so resuming can be tested from it.
COMMON = [f"trainer.max_steps={STEPS}", "trainer.save_every=3", "data.packing_length=512", "parallel.device=cpu"]
RUN_TIMEOUT_S = 540  # a first DeepSpeed run on a fresh machine also builds its CPU comm op (~1-2 min)

needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="DeepSpeed not installed (uv sync --extra deepspeed)")


# ---- launching the real entry point ----

def _env(token_cache: Path) -> dict:
    env = dict(os.environ, LMMS_ENGINE_CACHE=str(token_cache))
    env.pop("LMMS_RUN_STAMP", None)  # the run-directory test checks what torchrun alone gives
    return env


def _launch(args: list[str], token_cache: Path) -> None:
    proc = subprocess.run(args, cwd=REPO, env=_env(token_cache), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        pytest.fail(f"`{' '.join(args[1:])}` exited {proc.returncode}:\n{tail}")


def train_single(run_dir: Path, token_cache: Path, *overrides: str) -> Path:
    _launch([sys.executable, "train.py", "parallel=single", *COMMON, "trainer.export_hf=false", f"hydra.run.dir={run_dir}",
             *overrides], token_cache)
    return run_dir


def torchrun(output_root: Path, token_cache: Path, *overrides: str) -> Path:
    """Two ranks, run directory chosen by the app itself (no hydra.run.dir); returns it. Exports to hf/."""
    _launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "train.py", *COMMON,
             "trainer.export_hf=true", f"output_root={output_root}", *overrides], token_cache)
    return only_run_dir(output_root)


def only_run_dir(output_root: Path) -> Path:
    """The one run directory `${output_root}/${name}/<stamp>`; fails if the ranks made more."""
    run_dirs = [p for p in output_root.glob("*/*") if p.is_dir()]
    assert len(run_dirs) == 1, f"expected one run directory under {output_root}, found {run_dirs}"
    return run_dirs[0]


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(rows[0]["step"], rows[0]["step"] + len(rows)))
    return [r["loss"] for r in rows]


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token_cache")


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory, token_cache) -> list[float]:
    # grad_accum=2 in one process = grad_accum=1 on each of two ranks.
    run_dir = train_single(tmp_path_factory.mktemp("single") / "run", token_cache, "trainer.grad_accum=2")
    return losses(run_dir)


@pytest.fixture(scope="module")
def untied_reference_losses(tmp_path_factory, token_cache) -> list[float]:
    run_dir = train_single(tmp_path_factory.mktemp("single_untied") / "run", token_cache, "trainer.grad_accum=2",
                           *TINY_TEXT, "model.config.tie_word_embeddings=false")
    return losses(run_dir)


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory, token_cache):
    """parallel option (plus overrides) -> its torchrun run directory, launched once per module."""
    runs: dict[tuple[str, ...], Path] = {}

    def get(parallel: str, *overrides: str) -> Path:
        key = (parallel, *overrides)
        if key not in runs:
            runs[key] = torchrun(tmp_path_factory.mktemp(parallel), token_cache, f"parallel={parallel}", *overrides)
        return runs[key]

    return get


# ---- torchrun tests ----

@pytest.mark.parametrize("parallel", ["fsdp2", "ddp", pytest.param("zero2", marks=needs_deepspeed),
                                      pytest.param("zero3", marks=needs_deepspeed)])
@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_match_single_process(parallel, reference_losses, distributed_runs):
    got = losses(distributed_runs(parallel))
    assert len(got) == STEPS
    assert got[0] == pytest.approx(reference_losses[0], abs=1e-5), "step 1: same weights, same data"
    assert got == pytest.approx(reference_losses, abs=1e-4), f"{parallel} diverges from the single-process run"


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_ranks_share_one_run_directory(distributed_runs):
    run_dir = distributed_runs("ddp")  # asserts the output root holds exactly one run directory
    assert {".hydra", "metrics.jsonl", "checkpoints", "hf"} <= {p.name for p in run_dir.iterdir()}
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_3", f"step_{STEPS}"]


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp2_export_writes_a_tied_lm_head_once(distributed_runs):
    """FSDP2's gathered state dict holds the tied lm_head.weight as its own copy; the export drops it
    (as DDP's and a single process's do), and the model loads back tied."""
    fsdp2 = load_file(distributed_runs("fsdp2") / "hf" / "model.safetensors")
    ddp = load_file(distributed_runs("ddp") / "hf" / "model.safetensors")
    assert sorted(fsdp2) == sorted(ddp) and "lm_head.weight" not in fsdp2


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_untied_lm_head_matches_single_process(untied_reference_losses, distributed_runs):
    """The loss reads lm_head.weight without calling lm_head: ZeRO-3 must still gather it."""
    got = losses(distributed_runs("zero3", *ZERO3_UNTIED))
    assert len(got) == STEPS
    assert got[0] == pytest.approx(untied_reference_losses[0], abs=1e-5), "step 1: same weights, same data"
    assert got == pytest.approx(untied_reference_losses, abs=1e-4), "zero3 (untied lm_head) diverges"


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_untied_export_has_both_matrices(distributed_runs):
    exported = load_file(distributed_runs("zero3", *ZERO3_UNTIED) / "hf" / "model.safetensors")
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= set(exported)
    assert not torch.equal(exported["lm_head.weight"], exported["model.embed_tokens.weight"])


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_builds_partitioned_with_single_process_weights(tmp_path, token_cache):
    """Right after the build each rank holds about 1/world of the model (it was never whole), and
    the gathered weights are the single-process build's. DeepSpeed's bf16 path (forced on CPU)
    computes in bf16 while its fp32 masters equal the fp32 weights as built. The lm_head weight the
    loss reads is an external parameter of the trained module."""
    probe = Path(__file__).with_name("zero3_build_probe.py")
    _launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(probe), str(tmp_path),
             *ZERO3_UNTIED, "bf16"], token_cache)
    for rank in range(2):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["all_zero_params"] and report["built_dtypes"] == ["torch.float32"]
        assert report["local_numel"] == pytest.approx(report["total_numel"] / 2, rel=0.01), report
        assert not report["lm_head_tied"]
        assert report["weights_differ_from_single_process"] == []
        assert report["lm_head_registered"], "the loss reads lm_head.weight outside lm_head.forward"
        assert report["compute_dtypes"] == ["torch.bfloat16"]
        assert report["masters_differ_from_fp32_build"] == []


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_resumes_from_its_own_checkpoint(tmp_path, token_cache, distributed_runs):
    """DeepSpeed writes and reads its own checkpoint format; steps after the resume are unchanged."""
    reference_dir = distributed_runs("zero3")
    resumed_dir = torchrun(tmp_path, token_cache, "parallel=zero3",
                           f"trainer.resume={reference_dir / 'checkpoints' / 'step_3'}")
    assert losses(resumed_dir) == pytest.approx(losses(reference_dir)[3:], abs=1e-6)


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_export_gathers_the_same_weights_as_ddp(distributed_runs):
    """ZeRO-3 export gathers partitioned fp32 masters; DDP's is a plain state dict of its inner module."""
    zero3 = load_file(distributed_runs("zero3") / "hf" / "model.safetensors")
    ddp = load_file(distributed_runs("ddp") / "hf" / "model.safetensors")
    assert sorted(zero3) == sorted(ddp)
    for name, tensor in ddp.items():
        assert zero3[name].dtype == torch.float32 and zero3[name].shape == tensor.shape, name
        torch.testing.assert_close(zero3[name], tensor, atol=1e-5, rtol=1e-4, msg=name)


def _one_image_one_text(tmp_path: Path) -> Path:
    """Two samples, one with an image: with one unpacked sample per micro-batch, every step gives
    one rank an image and the other none."""
    demo = REPO / "lmms_engine" / "data" / "demo"
    image_record = (demo / "vl_chat.jsonl").read_text().splitlines()[0]
    text_record = (demo / "text_chat.jsonl").read_text().splitlines()[0]
    data = tmp_path / "mixed.jsonl"
    data.write_text(f"{image_record}\n{text_record}\n")
    (tmp_path / "mixed.yaml").write_text(
        f"datasets:\n  - path: {data}\n    data_folder: {demo / 'media'}\n    data_type: jsonl\n")
    return tmp_path / "mixed.yaml"


@pytest.mark.parametrize("parallel", ["fsdp2", pytest.param("zero3", marks=needs_deepspeed)])
@pytest.mark.distributed
@pytest.mark.slow
def test_a_rank_without_images_neither_hangs_nor_changes_the_loss(parallel, tmp_path, token_cache):
    """Tiny Qwen2.5-VL with every parameter sharded / partitioned: the rank whose micro-batch has no
    image still runs the vision blocks (dummy input), so the collectives match; losses equal the
    single process's."""
    data = ["data=sft", f"data.dataset_path={_one_image_one_text(tmp_path)}", "data.packing=false",
            "data.micro_batch_size=1", "trainer.max_steps=4", "trainer.save_every=0"]
    reference = losses(train_single(tmp_path / "single", token_cache, "trainer.grad_accum=2", *data))
    extra = ["parallel.param_persistence_threshold=0"] if parallel == "zero3" else []
    got = losses(torchrun(tmp_path / parallel, token_cache, f"parallel={parallel}", *data, *extra))
    assert got == pytest.approx(reference, abs=1e-5)


# ---- quick checks (no processes launched) ----

@pytest.mark.parametrize("parallel", ["ddp", "zero1", "zero2", "zero3"])
def test_strategy_configs_validate(parallel):
    rc = validate(compose_config(f"parallel={parallel}"))
    assert rc.groups["parallel"]._target_.startswith("lmms_engine.parallel.")


def test_deepspeed_options_are_checked():
    with pytest.raises(ValueError, match="stages are"):
        DeepSpeedZero(stage=4, device="cpu")
    with pytest.raises(ValueError, match="offload_params=true needs ZeRO stage 3"):
        DeepSpeedZero(stage=2, device="cpu", offload_params=True)


def test_deepspeed_config_leaves_accumulation_and_clipping_to_the_loop():
    config = deepspeed_config(stage=2, bf16=True, offload_optimizer=True, offload_params=False, pin_memory=False)
    assert "stage3_param_persistence_threshold" not in config["zero_optimization"]
    assert config["gradient_accumulation_steps"] == 1 and config["train_micro_batch_size_per_gpu"] == 1
    assert config["gradient_clipping"] == 0.0
    assert config["bf16"] == {"enabled": True} and config["data_types"] == {"grad_accum_dtype": "fp32"}
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in config["zero_optimization"]


def test_only_zero3_builds_inside_zero_init():
    assert isinstance(DeepSpeedZero(stage=2, device="cpu").model_init_context(), contextlib.nullcontext)
    assert not isinstance(DeepSpeedZero(stage=3, device="cpu").model_init_context(), contextlib.nullcontext)
    with pytest.raises(ValueError, match="param_persistence_threshold"):
        DeepSpeedZero(stage=3, device="cpu", param_persistence_threshold=-1)
