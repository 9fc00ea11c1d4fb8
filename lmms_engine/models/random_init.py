"""Random initialisation that gives the same weights whole or partitioned (ZeRO-3)."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.initialization import no_init_weights

from lmms_engine import compat
from lmms_engine.parallel.model_init import building_partitioned


def build_random(model_class: type[PreTrainedModel], config: PretrainedConfig) -> PreTrainedModel:
    """`model_class(config)` in fp32, its weights drawn by the model's own `_init_weights` alone.

    torch's per-layer default inits (nn.Linear.reset_parameters ...) are skipped: transformers
    overwrites them anyway, and under ZeRO-3 it skips them too. Inside a
    `Strategy.model_init_context()` that partitions the model as it is built (ZeRO-3's: zero.Init
    active, transformers' HfDeepSpeedConfig alive; parallel/model_init.py says so), transformers'
    `_from_config` builds the model partitioned and initialises it one gathered module at a time on
    rank 0, in the same module order as `initialize_weights` below. With the same seed and device
    both paths draw the same numbers, so a ZeRO-3 run starts from the single-process weights.
    """
    if building_partitioned():
        # transformers: no_init_weights + zero.Init while building, then initialize_weights_zero3 and tie_weights.
        return compat.submodule_from_config(model_class, config, dtype=torch.float32)
    with no_init_weights():  # also skips post_init's init_weights (and its tie_weights)
        model = model_class(config)
    model.initialize_weights()
    model.tie_weights()
    return model.float()
