"""The held-out loss: every eval micro-batch once, without gradients, over all ranks.

eval_loss = (sum of the token cross-entropies of every trained label token of the eval data) /
(the number of those tokens), the same token weighting as the training loss. Micro-batch i goes to
data replica i % data_world_size (the ranks of one SP group share it); the sums are all-reduced in float64, so the value does not depend on the world
size or on how the samples are packed or padded into micro-batches (up to floating-point order).
"""

from __future__ import annotations

import math

import torch

from lmms_engine.data.batch import Batch
from lmms_engine.data.holdout import EvalData
from lmms_engine.train.loop import StepContext


def evaluate(ctx: StepContext, data: EvalData) -> dict:
    """{"eval_loss", "eval_tokens"} (trained label tokens of the eval data, all ranks) at the module's
    current weights. The module is back in training mode afterwards."""
    strategy = ctx.strategy
    micro_batches = data.eval_micro_batches()
    replicas, replica = strategy.data_world_size, strategy.data_rank  # the SP ranks of a group share micro-batches
    rounds = math.ceil(len(micro_batches) / replicas)
    sums = torch.zeros(2, dtype=torch.float64, device=strategy.device)  # loss sum, label tokens
    ctx.module.eval()  # no dropout (LoRA's included)
    try:
        with torch.no_grad():
            for r in range(rounds):
                index = r * replicas + replica
                # Sharded strategies (fsdp2, zero3) gather weights inside forward, a collective every
                # rank must join: a rank with no micro-batch left runs the first one and drops it.
                owned = index < len(micro_batches)
                batch = _on_device(ctx, data.collate(micro_batches[index if owned else 0]))
                with strategy.autocast():
                    loss = ctx.module(labels=batch.labels, **batch.model_inputs(ctx.input_keys),
                                      **ctx.attention_kwargs(batch))
                if owned:
                    sums[0] += loss.double()
                    sums[1] += float(batch.num_label_tokens)
    finally:
        ctx.module.train()
    loss_sum = strategy.all_reduce_sum(sums[:1].clone()).item()  # each rank's (shard's) token losses
    tokens = strategy.all_reduce_data(sums[1:].clone()).item()  # whole micro-batches: once per data replica
    return {"eval_loss": loss_sum / max(tokens, 1.0), "eval_tokens": int(tokens)}


def _on_device(ctx: StepContext, batch: Batch) -> Batch:
    # As the training step prepares its batches: unpadded when kernels.use_rmpad runs on padded data,
    # packs padded to whole sequence shards.
    return (batch.unpadded() if ctx.unpad else batch).padded_to_multiple(ctx.pack_multiple).to(ctx.strategy.device)
