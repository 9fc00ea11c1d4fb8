"""DeepSpeed ZeRO 1/2/3: optimizer state (1), + gradients (2), + parameters (3) partitioned over the
data-parallel ranks, optionally offloaded to CPU memory. The DeepSpeed config is generated from our
few keys; the optimizer is the loop's torch AdamW (no DeepSpeed JIT op builds).

How the loop's calls map onto DeepSpeed:
- accumulation is ours: DeepSpeed sees gradient_accumulation_steps=1 (so it never divides the loss)
  and gradient_sync() marks the last micro-batch with engine.set_gradient_accumulation_boundary();
  DeepSpeed averages gradients over ranks, as the loop's loss scale (world_size / tokens) expects.
- norm, clip and update are one call in DeepSpeed (engine.step(): the partitioned gradients' global
  norm is computed there). clip_grad_norm() sets the threshold, runs engine.step() and returns the
  pre-clip global norm DeepSpeed computed; optimizer_step() then has nothing left to do.
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
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from lmms_engine import compat
from lmms_engine.checkpoint.safe_load import deepspeed_weights_only
from lmms_engine.parallel import dist as pdist
from lmms_engine.parallel.base import Strategy, compute_dtype
from lmms_engine.parallel.deepspeed_release import release_comm, release_engine
from lmms_engine.names import unwrapped_name
from lmms_engine.options import ZERO_STAGES
from lmms_engine.parallel.common import apply_checkpointing_and_compile, checkpoint_every

log = logging.getLogger(__name__)

CHECKPOINT_TAG = "deepspeed"  # DeepSpeed writes its files under <checkpoint dir>/deepspeed/


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
                 encoder_checkpointing: bool | None = None, param_persistence_threshold: int = 100_000):
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
        self._stepped = False  # clip_grad_norm() already ran this step's engine.step()

    def setup(self) -> None:
        import_deepspeed()  # fail before any work if the extra is missing
        pdist.init_process_group(self.device)
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()

    def config(self) -> dict:
        return deepspeed_config(self.stage, bf16=self.dtype == torch.bfloat16, offload_optimizer=self.offload_optimizer,
                                offload_params=self.offload_params, pin_memory=self.device.type == "cuda",
                                param_persistence_threshold=self.param_persistence_threshold)

    def frozen_dtype(self) -> None:  # build_optimizer casts all; only trainable weights get fp32 masters
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

    def clip_grad_norm(self, module: nn.Module, max_norm: float) -> float:
        """Clip to max_norm and update (one DeepSpeed call); return the global norm before clipping."""
        self._set_clip_threshold(max_norm)
        self.engine.step()
        self._stepped = True
        return float(self.engine.get_global_grad_norm())

    def optimizer_step(self, optimizer: torch.optim.Optimizer, module: nn.Module) -> None:
        if not self._stepped:  # a caller that did not clip: the update has not happened yet
            self._set_clip_threshold(float("inf"))
            self.engine.step()
        self._stepped = False  # engine.step() has also zeroed the gradients

    def step(self, module: nn.Module, optimizer: torch.optim.Optimizer, *, max_norm: float,
             loss: float) -> tuple[float, bool]:
        """DeepSpeed clips and updates in one call, so only the loss can be checked before the
        update: a non-finite loss drops the step's gradients (as DeepSpeed's own fp16 overflow
        path does); a non-finite gradient norm with a finite loss is left to DeepSpeed. The loss is
        all-reduced, so every rank takes the same branch."""
        if not math.isfinite(loss):
            drop_gradients(self.engine.optimizer)
            return float("nan"), True
        grad_norm = self.clip_grad_norm(module, max_norm)
        self.optimizer_step(optimizer, module)
        return grad_norm, False

    def _set_clip_threshold(self, max_norm: float) -> None:
        # DeepSpeed's ZeRO optimizers clip by their `clip_grad` (0 = off), taken from the config at
        # initialize; the loop only passes max_norm now. inf (clipping off) -> 0.
        compat.deepspeed_set_clip_threshold(self.engine.optimizer, 0.0 if math.isinf(max_norm) else float(max_norm))

    def save_model_optimizer(self, path: Path, module: nn.Module, optimizer) -> None:
        """Write model + optimizer state into the existing directory `path`. Every rank calls this."""
        self.engine.save_checkpoint(str(path), tag=CHECKPOINT_TAG, save_latest=False,  # LoRA: trainable only
                                    exclude_frozen_parameters=not self.checkpoint_frozen)

    def load_model_optimizer(self, path: Path, module: nn.Module, optimizer) -> None:
        """Load what save_model_optimizer wrote into `path` (same world size and ZeRO stage)."""
        if not (path / CHECKPOINT_TAG).is_dir():
            raise ValueError(f"{path} holds no DeepSpeed checkpoint (no {CHECKPOINT_TAG}/ folder): "
                             "resume a parallel=zero* run with the same parallel option")
        with deepspeed_weights_only(self.engine):  # DeepSpeed itself would unpickle anything
            loaded, _ = self.engine.load_checkpoint(str(path), tag=CHECKPOINT_TAG, load_optimizer_states=True,
                                                    load_lr_scheduler_states=False, load_module_strict=self.checkpoint_frozen)
        if loaded is None:
            raise ValueError(f"DeepSpeed could not load the checkpoint in {path}")

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """Full fp32 weights in CPU memory on rank 0 (empty elsewhere), named as the module's
        state_dict. Every rank calls this: gathering partitioned parameters is collective."""
        return gather_full_state_dict(self.unwrap(module), keep=self.is_main)

    def teardown(self) -> None:
        """Release the engine and DeepSpeed's group references (deepspeed_release.py), then the groups."""
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


@contextlib.contextmanager
def zero3_init(config: dict):
    """Build the model partitioned: deepspeed.zero.Init, with transformers told about ZeRO-3.

    zero.Init partitions each module's parameters over the ranks as soon as its __init__ returns
    (no rank ever holds the whole model). They stay fp32: the masters must start from the fp32
    weights (see restore_fp32_masters), so cast_keeping_fp32 makes the bf16 copies later.
    transformers' HfDeepSpeedConfig is kept alive meanwhile (transformers holds only a weak
    reference): `from_pretrained` then reads the checkpoint into the partitions on rank 0, module
    by module, and `_from_config` initialises random weights per gathered module (random_init.py).
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
        with deepspeed.zero.Init(config_dict_or_path=config):
            yield
    finally:
        unset_hf_deepspeed_config()  # later code (export, a second model) sees plain transformers again
        del hf_config


def register_loss_head(module: nn.Module) -> None:
    """Let ZeRO-3 gather the output-embedding (lm_head) weight for `module`'s own forward.

    The trained module hands the weight to a fused linear cross-entropy instead of calling
    lm_head.forward, so DeepSpeed's per-module hooks do not gather it for lm_head: registered as
    an external parameter of the root module it is gathered for the root's forward and backward.
    Tied or not: the weight the loss reads. (DeepSpeed 0.19's engine also discovers such a read
    during an eager forward and registers it then; registering up front does not depend on that
    discovery, which is off while torch.compile traces.)
    """
    deepspeed = import_deepspeed()
    deepspeed.zero.register_external_parameter(module, output_embedding_weight(module))


def output_embedding_weight(module: nn.Module) -> nn.Parameter:
    """The lm_head weight of the outermost HF model inside `module`."""
    for sub in module.modules():
        if isinstance(sub, PreTrainedModel) and sub.get_output_embeddings() is not None:
            return sub.get_output_embeddings().weight
    raise AssertionError(f"{type(module).__name__} holds no HF model with output embeddings")


@dataclass
class Fp32Masters:
    """The trainable parameters' fp32 values before the cast, by name: whole tensors, and the local
    partitions of ZeRO-3 parameters built under zero.Init."""

    whole: dict[str, torch.Tensor]
    partitions: dict[str, torch.Tensor]


def cast_keeping_fp32(module: nn.Module, dtype: torch.dtype) -> Fp32Masters:
    """Cast `module`'s floating parameters to `dtype`, keeping the trainable ones' fp32 values.

    Whole parameters: DeepSpeed would cast them the same way (`p.data = p.data.to(dtype)`); the
    fp32 tensors are kept by reference, no copy. ZeRO-3 parameters built under zero.Init: DeepSpeed
    takes them as they are, so their local partition (`ds_tensor`) is cast here and its fp32 values
    kept in CPU memory (off the device while DeepSpeed allocates its own fp32 masters).
    """
    whole, partitions = {}, {}
    for name, param in module.named_parameters():
        if not param.is_floating_point() or param.dtype == dtype:
            continue
        partition = compat.zero3_partition(param)
        if partition is not None:
            fp32 = partition.data
            partition.data = fp32.to(dtype)
            param.data = torch.empty(0, dtype=dtype, device=param.device)  # the gathered dtype follows ds_tensor
            if param.requires_grad:
                partitions[name] = fp32.cpu()  # the old tensor: ds_tensor now holds a new one
        else:
            if param.requires_grad:
                whole[name] = param.data
            param.data = param.data.to(dtype)
    return Fp32Masters(whole=whole, partitions=partitions)


def restore_fp32_masters(module: nn.Module, masters: Fp32Masters) -> None:
    """Set DeepSpeed's fp32 master weights to the values before the cast to bf16.

    DeepSpeed copies its fp32 masters from the bf16 parameters, so the masters would start rounded
    to 8 mantissa bits: small early updates then round away in every bf16 copy, and training drifts
    from FSDP2's (whose masters are the fp32 model). Local copies only (each rank writes its own
    partition): no collectives.
    """
    deepspeed = import_deepspeed()
    for name, param in module.named_parameters():
        if name in masters.partitions:
            deepspeed.utils.safe_set_local_fp32_param(param, masters.partitions[name])
        elif name in masters.whole:
            deepspeed.utils.safe_set_full_fp32_param(param, masters.whole[name].float())


def gather_full_state_dict(module: nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """Each parameter (and persistent buffer) whole, in fp32 on CPU where `keep`, else dropped.

    Parameters are gathered one at a time, in the same order on every rank, so peak memory is one
    full parameter beyond the CPU copy. Tied parameters are gathered once and listed under each name.
    """
    tensors = _named_tensors(module)
    names = list(module.state_dict(keep_vars=True).keys())  # checkpoint_wrapper's hook strips its prefix here
    gathered: dict[int, torch.Tensor] = {}
    state = {}
    for name in names:
        tensor = tensors[name]
        if id(tensor) not in gathered:
            full = _full_fp32(tensor) if isinstance(tensor, nn.Parameter) else tensor.detach()
            gathered[id(tensor)] = full.cpu() if keep else None
        if keep:
            state[name] = gathered[id(tensor)]
    return state


def _named_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    named = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    # Named as the module's state_dict (checkpoint_wrapper's part hidden, the training module's `lm.` kept).
    return {unwrapped_name(name, prefixes=()): tensor for name, tensor in named}


def _full_fp32(param: nn.Parameter) -> torch.Tensor:
    """The whole fp32 master copy of a trainable parameter; frozen ones from the module itself."""
    deepspeed = import_deepspeed()
    full = deepspeed.utils.safe_get_full_fp32_param(param)  # collective; None for frozen params
    if full is not None:
        return full
    if compat.is_zero3_param(param):  # a frozen ZeRO-3 parameter: only partitioned in the module
        with deepspeed.zero.GatheredParameters([param]):
            return param.detach().float().clone()
    return param.detach().float()
