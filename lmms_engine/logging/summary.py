"""Run-level facts for the run's summary (wandb) and the console: data statistics, parameter counts."""

from __future__ import annotations

from torch import nn


def param_counts(model: nn.Module) -> dict[str, int]:
    """{params, trainable_params}: whole-model counts, also when the parameters are partitioned."""
    total = trainable = 0
    for param in model.parameters():
        # ZeRO-3 partitions a parameter in place (numel() is this rank's share, or 0); ds_numel is its full size.
        numel = param.ds_numel if hasattr(param, "ds_numel") else param.numel()
        total += numel
        trainable += numel if param.requires_grad else 0
    return {"params": total, "trainable_params": trainable}


def run_summary(data_stats: dict, model: nn.Module) -> dict:
    return {"data_stats": dict(data_stats), **param_counts(model)}
