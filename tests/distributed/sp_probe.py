"""Run under `torchrun --nproc_per_node=W`: one optimizer step of FSDP2 with parallel.sp_degree=N
against the single-process reference on the same micro-batches; rank 0 writes <out>/report.json
(read by test_sequence_parallel.py).

    python -m torch.distributed.run --nproc_per_node=4 tests/distributed/sp_probe.py OUT SP [vl] [overrides...]

The step is the loop's own train_step with SGD at lr 1 and no clipping, so the parameter change is
minus the gradient: comparing the gathered parameters after the step with the reference's compares
every gradient. The reference runs, in each process, the plain model (no SP, no FSDP) over all
micro-batches of the step (data replicas x grad_accum), with the loss divided by their label tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lmms_engine.compat import CHECKPOINT_WRAPPER_PREFIX  # noqa: E402
from lmms_engine.config import validate  # noqa: E402
from lmms_engine.data.dataset import build_sft_dataset  # noqa: E402
from lmms_engine.kernels.patcher import KernelPatcher  # noqa: E402
from lmms_engine.parallel.fsdp2 import FSDP2  # noqa: E402
from lmms_engine.train.app import instantiate  # noqa: E402
from lmms_engine.train.loop import StepContext, train_step  # noqa: E402
from lmms_engine.train.module import CausalLMWithLoss  # noqa: E402
from lmms_engine.train.state import seed_everything  # noqa: E402
from tests.conftest import compose_config  # noqa: E402

GRAD_ACCUM = 2


def main(out: Path, sp_degree: int, vl: bool, overrides: list[str]) -> None:
    rc = validate(compose_config("parallel=fsdp2", "parallel.device=cpu", "data.packing_length=256",
                                 *overrides, vl=vl))
    parallel = rc.groups["parallel"]  # activation checkpointing / offload as the overrides set them
    strategy = FSDP2(device="cpu", precision="fp32", meta_init=False, sp_degree=sp_degree,
                     activation_checkpointing=parallel.activation_checkpointing,
                     offload_activations=parallel.offload_activations)
    strategy.setup()
    try:
        report = probe(rc, strategy, vl)
    finally:
        strategy.teardown()
    if report is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))


def build(rc):
    seed_everything(rc.trainer.seed)
    return instantiate(rc.groups["model"], _convert_="all")


def step_micro_batches(dataset, count: int, vl: bool) -> list:
    """The first `count` micro-batches of epoch 0; for VL, the first run of them holding images and a video."""
    batches = list(dataset.micro_batches(0))
    if not vl:
        return batches[:count]
    for start in range(len(batches) - count + 1):
        window = [dataset.collate(mb) for mb in batches[start:start + count]]
        if any(b.pixel_values is not None for b in window) and any(b.pixel_values_videos is not None for b in window):
            return batches[start:start + count]
    raise AssertionError("no window of micro-batches with both images and a video in the demo data")


def reference_step(rc, dataset, micro_batches: list) -> tuple[float, float, dict]:
    """(loss, grad norm, parameters after SGD lr=1) of the plain model over every micro-batch."""
    bundle = build(rc)
    patcher = KernelPatcher(attn_backend="sdpa")
    patcher.apply(bundle.model, torch.device("cpu"), padding_free=True, encoders=bundle.encoders,
                  decoder_path=bundle.decoder_path)
    module = CausalLMWithLoss(bundle.model, patcher.loss_fn(), bundle.hidden_states)
    batches = [dataset.collate(mb) for mb in micro_batches]
    label_tokens = sum(b.num_label_tokens for b in batches)
    loss = 0.0
    for b in batches:
        batch_loss = module(labels=b.labels, **b.model_inputs(bundle.input_keys), **patcher.attention_kwargs(b))
        (batch_loss / label_tokens).backward()
        loss += batch_loss.item()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
    with torch.no_grad():
        after = {name: (p - p.grad).clone() for name, p in module.named_parameters() if p.grad is not None}
    return loss / label_tokens, grad_norm, after


def sp_step(rc, dataset, strategy, micro_batches: list) -> tuple[dict, dict]:
    """The loop's train_step on this rank's share; (its stats, gathered parameters after the step)."""
    bundle = build(rc)
    patcher = KernelPatcher(attn_backend="sdpa")
    patcher.apply(bundle.model, strategy.device, padding_free=True, encoders=bundle.encoders,
                  decoder_path=bundle.decoder_path, sequence_parallel=strategy.sequence_parallel)
    module = CausalLMWithLoss(bundle.model, patcher.loss_fn(), bundle.hidden_states)
    strategy.shard_sequence(module, bundle.decoder_path)
    module = strategy.prepare(module, bundle.shard_units, bundle.encoder_units)
    optimizer = torch.optim.SGD(module.parameters(), lr=1.0)
    ctx = StepContext(module=module, optimizer=optimizer, strategy=strategy, collate=dataset.collate,
                      attention_kwargs=patcher.attention_kwargs, flops_fn=lambda batch: 0.0,
                      input_keys=bundle.input_keys, pack_multiple=sp_degree(strategy))
    mine = micro_batches[strategy.data_rank::strategy.data_world_size]
    stats = train_step(ctx, mine)
    # Named as the reference's (an activation-checkpoint wrapper adds its part to the names).
    after = {name.replace(CHECKPOINT_WRAPPER_PREFIX, ""): p.full_tensor().detach().clone()
             for name, p in module.named_parameters()}
    return stats, after


def sp_degree(strategy) -> int:
    return strategy.sequence_parallel.degree if strategy.sequence_parallel is not None else 1


def probe(rc, strategy, vl: bool) -> dict | None:
    bundle = build(rc)
    dataset = build_sft_dataset(bundle.tokenizer, instantiate(rc.groups["data"]), seed=rc.trainer.seed,
                                **bundle.data_inputs())
    micro_batches = step_micro_batches(dataset, GRAD_ACCUM * strategy.data_world_size, vl)
    stats, after = sp_step(rc, dataset, strategy, micro_batches)
    if not strategy.is_main:
        return None
    ref_loss, ref_norm, ref_after = reference_step(rc, dataset, micro_batches)
    lengths = [int(dataset.collate(mb).input_ids.shape[1]) for mb in micro_batches]
    return {
        "world_size": strategy.world_size,
        "sp_degree": sp_degree(strategy),
        "pack_lengths": lengths,
        "loss": stats["loss"], "ref_loss": ref_loss,
        "grad_norm": stats["grad_norm"], "ref_grad_norm": ref_norm,
        "label_tokens": stats["label_tokens"],
        "ref_label_tokens": sum(dataset.collate(mb).num_label_tokens for mb in micro_batches),
        "params_compared": len(ref_after),
        "params_missing": sorted(set(ref_after) - set(after)),
        "offloaded_tensors": strategy.offloader.packed_tensors if strategy.offloader else 0,
        "restored_tensors": strategy.offloader.unpacked_tensors if strategy.offloader else 0,
        "max_param_diff": max((after[name] - value).abs().max().item() for name, value in ref_after.items() if name in after),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    is_vl = len(args) > 2 and args[2] == "vl"
    main(Path(args[0]), int(args[1]), is_vl, args[3 if is_vl else 2:])
