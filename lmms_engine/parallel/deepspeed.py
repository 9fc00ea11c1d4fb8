"""DeepSpeed ZeRO 1/2/3: optimizer state (1), + gradients (2), + parameters (3) partitioned over the
data-parallel ranks, optionally offloaded to CPU memory. The DeepSpeed config is generated from our
few keys (parallel/deepspeed_config.py); the optimizer is the loop's torch AdamW (no DeepSpeed JIT
op builds).

How the loop's calls map onto DeepSpeed:
- accumulation is ours: DeepSpeed sees gradient_accumulation_steps=1 (so it never divides the loss)
  and gradient_sync() marks the last micro-batch with engine.set_gradient_accumulation_boundary();
  DeepSpeed averages gradients over ranks, as the loop's loss scale (world_size / tokens) expects.
- norm, clip and update are one call in DeepSpeed (engine.step(): the partitioned gradients' global
  norm is computed there, then they are clipped and applied). So step() is that call:
  clip_grad_norm() sets the threshold DeepSpeed clips to, optimizer_step() runs engine.step(), and
  the pre-clip global norm DeepSpeed computed is read back afterwards (grad_norm()).
- checkpoints use DeepSpeed's own format (read weights-only: checkpoint/safe_load.py); the HF export
  gathers full fp32 weights with deepspeed.utils.safe_get_full_fp32_param (full_state_dict).

ZeRO-3 never holds the whole model on one rank:
- model_init_context() is deepspeed.zero.Init (fp32) plus transformers' HfDeepSpeedConfig: each
  module's parameters are partitioned right after it is constructed, `from_pretrained` reads the
  checkpoint into the partitions, and random init runs per gathered module (models/random_init.py).
- build_optimizer() casts those fp32 partitions to the compute dtype itself (DeepSpeed leaves a
  zero.Init model as built) and hands the fp32 values to DeepSpeed's masters (cast_keeping_fp32).
- prepare() registers the lm_head weight as an external parameter of the trained module: the loss
  reads it in the module's own forward, never calling lm_head.forward, which is what would gather it.
What is done to the weights for these lives in parallel/deepspeed_weights.py.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import torch
from torch import nn

from lmms_engine import compat
from lmms_engine.checkpoint.safe_load import deepspeed_weights_only
from lmms_engine.parallel import dist as pdist
from lmms_engine.parallel.base import Strategy, compute_dtype
from lmms_engine.options import ZERO_STAGES, checkpoint_every
from lmms_engine.parallel.common import apply_checkpointing_and_compile
from lmms_engine.parallel.deepspeed_config import deepspeed_config, import_deepspeed, zero3_init
from lmms_engine.parallel.deepspeed_release import release_comm, release_engine
from lmms_engine.parallel.deepspeed_weights import (
    cast_keeping_fp32,
    gather_full_state_dict,
    register_loss_head,
    restore_fp32_masters,
)

log = logging.getLogger(__name__)

CHECKPOINT_TAG = "deepspeed"  # DeepSpeed writes its files under <checkpoint dir>/deepspeed/


class DeepSpeedModule(nn.Module):
    """What prepare() returns: the model, whose forward runs through the DeepSpeed engine.

    deepspeed.initialize needs the optimizer, which build_optimizer() makes after prepare(); this
    holder lets the loop keep one module object across both calls. The engine is kept out of the
    module tree (it contains the model itself) so parameters are not listed twice.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.__dict__["engine"] = None

    def attach(self, engine) -> None:
        assert engine.module is self.module, "the engine must wrap the prepared module"
        self.__dict__["engine"] = engine

    def forward(self, *args, **kwargs):
        if self.engine is None:
            raise RuntimeError("DeepSpeedModule called before DeepSpeedZero.build_optimizer() created the engine")
        return self.engine(*args, **kwargs)


class DeepSpeedZero(Strategy):
    """ZeRO data parallelism through DeepSpeed (torchrun; gloo on CPU, nccl on GPU)."""

    name = "deepspeed"

    def __init__(self, stage: int, device: str = "auto", precision: str = "auto", offload_optimizer: bool = False,
                 offload_params: bool = False, activation_checkpointing: bool | int = False,
                 encoder_checkpointing: bool | None = None,
                 param_persistence_threshold: int = 100_000):
        super().__init__(device)
        if stage not in ZERO_STAGES:
            raise ValueError(f"parallel.stage={stage!r}; DeepSpeed ZeRO stages are {ZERO_STAGES} (use parallel=zero1|zero2|zero3)")
        if offload_params and stage != 3:
            raise ValueError(f"parallel.offload_params=true needs ZeRO stage 3 (only it partitions parameters); got stage {stage}")
        if param_persistence_threshold < 0:
            raise ValueError(f"parallel.param_persistence_threshold={param_persistence_threshold}; use 0 or more elements")
        self.stage = stage
        self.param_persistence_threshold = param_persistence_threshold
        self.dtype = compute_dtype(precision, self.device)
        self.offload_optimizer = offload_optimizer
        self.offload_params = offload_params
        self.checkpoint_every = checkpoint_every(activation_checkpointing)
        self.encoder_checkpointing = encoder_checkpointing
        self.name = f"zero{stage}"
        self.engine = None

    def setup(self) -> None:
        import_deepspeed()  # fail before any work if the extra is missing
        pdist.init_process_group(self.device)
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()

    def config(self) -> dict:
        return deepspeed_config(self.stage, bf16=self.dtype == torch.bfloat16, offload_optimizer=self.offload_optimizer,
                                offload_params=self.offload_params, pin_memory=self.device.type == "cuda",
                                param_persistence_threshold=self.param_persistence_threshold)

    def frozen_dtype(self) -> None:
        """None: build_optimizer casts the whole model to the compute dtype (cast_keeping_fp32) and
        only the optimizer's (trainable) parameters get fp32 masters; frozen ones stay bf16 only."""
        return None

    def model_init_context(self):
        """ZeRO-3: build inside deepspeed.zero.Init, in fp32 (see zero3_init); other stages: as usual."""
        return zero3_init(self.config()) if self.stage == 3 else contextlib.nullcontext()

    def prepare(self, module: nn.Module, shard_units: tuple[type[nn.Module], ...],
                encoder_units: tuple[type[nn.Module], ...] = ()) -> nn.Module:
        apply_checkpointing_and_compile(module, shard_units, self.checkpoint_every, False, encoder_units,
                                        self.encoder_checkpointing)
        if self.stage == 3:
            register_loss_head(module)
        # Not moved to the device here: deepspeed.initialize casts it to bf16 first, then moves it
        # (half the bytes through the device). A ZeRO-3 model is already partitioned on its device.
        return DeepSpeedModule(module)

    def build_optimizer(self, module: nn.Module, make_optimizer) -> torch.optim.Optimizer:
        deepspeed = import_deepspeed()
        optimizer = make_optimizer(module)
        masters = cast_keeping_fp32(module.module, self.dtype) if self.dtype != torch.float32 else None
        engine, ds_optimizer, _, _ = deepspeed.initialize(model=module.module, optimizer=optimizer, config=self.config())
        if masters is not None:
            restore_fp32_masters(module.module, masters)
        module.attach(engine)
        self.engine = engine
        log.info("deepspeed: ZeRO-%d over %d ranks, %s params%s%s", self.stage, self.world_size, self.dtype,
                 ", optimizer offloaded" if self.offload_optimizer else "", ", params offloaded" if self.offload_params else "")
        # Its param_groups are the ones DeepSpeed steps with: the loop sets the learning rate there.
        return ds_optimizer

    def unwrap(self, module: nn.Module) -> nn.Module:
        """The module given to prepare() (under ZeRO-3 its parameters are partitioned placeholders)."""
        return module.module

    def gradient_sync(self, module: nn.Module, enabled: bool):
        # Set before the backward it applies to: DeepSpeed reduces (ZeRO-1) or finalises its
        # reduce-scatter buffers (ZeRO-2/3) on the boundary micro-batch only.
        self.engine.set_gradient_accumulation_boundary(enabled)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, module: nn.Module) -> None:
        # scale_wrt_gas=False: the loop's loss is already normalised over all micro-batches.
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self, module: nn.Module, optimizer: torch.optim.Optimizer, *, max_norm: float,
             loss: float) -> tuple[float, bool]:
        """DeepSpeed computes the global norm, clips and updates in one call, so only the loss can be
        checked before the update: a non-finite loss drops the step's gradients (as DeepSpeed's own
        fp16 overflow path does); a non-finite gradient norm with a finite loss is left to DeepSpeed.
        The loss is all-reduced, so every rank takes the same branch. Returns (the pre-clip global
        norm DeepSpeed computed, skipped)."""
        if not math.isfinite(loss):
            drop_gradients(self.engine.optimizer)
            return float("nan"), True
        self.clip_grad_norm(module, max_norm)
        self.optimizer_step(optimizer, module)
        return self.grad_norm(), False

    def clip_grad_norm(self, module: nn.Module, max_norm: float) -> None:
        """Clip the global gradient norm to max_norm in this step's update: DeepSpeed's ZeRO optimizer
        computes the norm over its gradient partitions and clips inside engine.step(), so this sets
        the threshold it clips to (optimizer_step() applies it; grad_norm() then returns the norm).
        DeepSpeed reads `clip_grad` (0 = off) from the config at initialize; inf (no clipping) -> 0."""
        compat.deepspeed_set_clip_threshold(self.engine.optimizer, 0.0 if math.isinf(max_norm) else float(max_norm))

    def optimizer_step(self, optimizer: torch.optim.Optimizer, module: nn.Module) -> None:
        """engine.step(): the global norm, the clip to clip_grad_norm()'s threshold, the update, and
        the gradients zeroed."""
        self.engine.step()

    def grad_norm(self) -> float:
        """The pre-clip global gradient norm DeepSpeed computed in the last optimizer_step()."""
        return float(self.engine.get_global_grad_norm())

    def save_model_optimizer(self, path: Path, module: nn.Module, optimizer) -> None:
        """Write model + optimizer state into the existing directory `path`. Every rank calls this."""
        # LoRA (exclude_frozen_from_checkpoints): the trainable weights and their optimizer state only.
        self.engine.save_checkpoint(str(path), tag=CHECKPOINT_TAG, save_latest=False,
                                    exclude_frozen_parameters=not self.checkpoint_frozen)

    def load_model_optimizer(self, path: Path, module: nn.Module, optimizer) -> None:
        """Load what save_model_optimizer wrote into `path` (same world size and ZeRO stage)."""
        if not (path / CHECKPOINT_TAG).is_dir():
            raise ValueError(f"{path} holds no DeepSpeed checkpoint (no {CHECKPOINT_TAG}/ folder): "
                             "resume a parallel=zero* run with the same parallel option")
        with deepspeed_weights_only(self.engine):  # DeepSpeed itself would unpickle anything
            loaded, _ = self.engine.load_checkpoint(str(path), tag=CHECKPOINT_TAG, load_optimizer_states=True,
                                                    load_lr_scheduler_states=False,
                                                    load_module_strict=self.checkpoint_frozen)
        if loaded is None:
            raise ValueError(f"DeepSpeed could not load the checkpoint in {path}")

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """Full fp32 weights in CPU memory on rank 0 (empty elsewhere), named as the module's
        state_dict. Every rank calls this: gathering partitioned parameters is collective."""
        return gather_full_state_dict(self.unwrap(module), keep=self.is_main)

    def teardown(self) -> None:
        """Release the engine (deepspeed_release.py says what held it), DeepSpeed's own group
        references, then the groups (pdist.destroy), so no process group outlives the run."""
        try:
            engine, self.engine = self.engine, None  # no reference left: pdist.destroy's collection frees it
            if engine is not None:
                release_engine(engine)
                del engine
            release_comm()
        finally:
            pdist.destroy()


def drop_gradients(optimizer) -> None:
    """What DeepSpeed's ZeRO-1/2 optimizer does on an fp16 overflow: forget this step's gradients
    (param grads, the reduced partitions, the flat buffers) without an update."""
    optimizer.zero_grad(set_to_none=True)
    compat.deepspeed_release_gradients(optimizer)

