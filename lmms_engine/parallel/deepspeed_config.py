"""The DeepSpeed side of parallel=zero1/zero2/zero3 that is not the strategy: importing the optional
extra, the config dict generated from our few keys, and the ZeRO-3 build context (zero.Init with
transformers told about it). The strategy itself is parallel/deepspeed.py."""

from __future__ import annotations

import contextlib

from lmms_engine.parallel.model_init import partitioned_build


def import_deepspeed():
    try:
        import deepspeed
    except ImportError:
        raise ValueError("parallel=zero1/zero2/zero3 needs DeepSpeed: install it with `uv sync --extra deepspeed`") from None
    return deepspeed


def deepspeed_config(stage: int, bf16: bool, offload_optimizer: bool, offload_params: bool, pin_memory: bool,
                     param_persistence_threshold: int = 100_000) -> dict:
    """The DeepSpeed config dict for our settings (https://www.deepspeed.ai/docs/config-json/)."""
    zero = {"stage": stage}
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = param_persistence_threshold
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin_memory}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin_memory}
    config = {
        # One micro-batch is one pack, and accumulation is driven by the loop (see module docstring).
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        # Set per step from the loop's max_norm by clip_grad_norm().
        "gradient_clipping": 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        # Offload with the loop's torch AdamW instead of DeepSpeedCPUAdam (which needs a JIT build).
        "zero_force_ds_cpu_optimizer": False,
    }
    if bf16:
        # bf16 params for compute, but accumulate and reduce gradients in fp32 (as FSDP2 does).
        config["data_types"] = {"grad_accum_dtype": "fp32"}
        config["communication_data_type"] = "fp32"
    return config


@contextlib.contextmanager
def zero3_init(config: dict):
    """Build the model partitioned: deepspeed.zero.Init, with transformers told about ZeRO-3.

    zero.Init partitions each module's parameters over the ranks as soon as its __init__ returns
    (no rank ever holds the whole model). They stay fp32: the masters must start from the fp32
    weights (see restore_fp32_masters), so cast_keeping_fp32 makes the bf16 copies later.
    transformers' HfDeepSpeedConfig is kept alive meanwhile (transformers holds only a weak
    reference): `from_pretrained` then reads the checkpoint into the partitions on rank 0, module
    by module, and `_from_config` initialises random weights per gathered module: the builders' random
    init takes that path inside `partitioned_build()` (parallel/model_init.py, models/random_init.py).
    Its own nested zero.Init adds nothing: the outermost context does the partitioning.
    """
    deepspeed = import_deepspeed()
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # fp32 through the config, not Init's dtype argument: DeepSpeed 0.19 ignores that one on
    # accelerators without fp16 support (the CPU one) and builds bf16.
    config = {**config, "bf16": {"enabled": False}}
    config.pop("data_types", None)
    config.pop("communication_data_type", None)
    hf_config = HfDeepSpeedConfig(config)
    try:
        with deepspeed.zero.Init(config_dict_or_path=config), partitioned_build():
            yield
    finally:
        unset_hf_deepspeed_config()  # later code (export, a second model) sees plain transformers again
        del hf_config
