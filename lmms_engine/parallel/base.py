"""What every parallel strategy shares; subclasses override how the model is wrapped and synced."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from lmms_engine.checkpoint.safe_load import dcp_load
from lmms_engine.options import PRECISIONS
from lmms_engine.parallel import dist as pdist



def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 compute on CUDA, fp32 on CPU. Master weights and optimizer state stay fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"parallel.precision={precision!r}; choose one of {PRECISIONS}")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if precision == "bf16" and device.type != "cuda":
        raise ValueError("parallel.precision=bf16 needs CUDA; use fp32 (or auto) on CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float32


class Strategy:
    """Single-process defaults; rank / world_size / device are set by subclasses' setup()."""

    name = "base"
    dtype = torch.float32  # compute dtype (subclasses: from parallel.precision)

    def __init__(self, device: str = "auto"):
        self.device = pdist.pick_device(device)
        self.rank, self.world_size = 0, 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # parallel.sp_degree > 1 (fsdp2): this rank's place in the (dp x sp) layout (parallel/sequence.py).
    sequence_parallel = None

    @property
    def data_rank(self) -> int:
        """Which data-parallel replica this rank is: the ranks of one SP group share their data."""
        return self.rank if self.sequence_parallel is None else self.sequence_parallel.data_rank

    @property
    def data_world_size(self) -> int:
        """Data-parallel replicas: micro-batches of a step are dealt out over this many."""
        return self.world_size if self.sequence_parallel is None else self.sequence_parallel.data_world_size

    @property
    def sequence_shards(self) -> int:
        """Ranks sharing one pack (1 without SP): packs are padded to a multiple of this many tokens."""
        return 1 if self.sequence_parallel is None else self.sequence_parallel.degree

    def shard_sequence(self, module: nn.Module, decoder_path: str) -> None:
        """Under sequence parallelism, train `module` (a CausalLMWithLoss, before prepare()) on this
        rank's slice of each pack: the inputs and positions of its decoder body (`decoder_path` in
        `module.lm`) and the loss's labels (parallel/sequence.py). Nothing without SP."""
        if self.sequence_parallel is not None:
            self.sequence_parallel.shard_module(module, decoder_path)

    # True where this rank should build the model on the meta device (rank 0 holds the weights).
    build_on_meta = False
    # True where prepare() torch.compiles the shard units (parallel.compile): the kernel patcher then
    # leaves the ops inside them to inductor (KernelPatcher.apply's `compiled`).
    compile = False

    def setup(self) -> None:
        raise NotImplementedError

    def model_init_context(self):
        """The context the model is built in, after setup() (default: none). ZeRO-3 returns
        deepspeed.zero.Init, so each layer is partitioned over the ranks as soon as it is made."""
        return contextlib.nullcontext()

    def frozen_dtype(self) -> torch.dtype | None:
        """The dtype that frozen weights (LoRA's base) are stored in before prepare(): the compute
        dtype, so a frozen weight has no fp32 copy, no gradient and no optimizer state. None where
        the strategy casts the model itself (DeepSpeed: only trainable weights get fp32 masters)."""
        return self.dtype

    def prepare(self, module: nn.Module, shard_units: tuple[type[nn.Module], ...],
                encoder_units: tuple[type[nn.Module], ...] = ()) -> nn.Module:
        raise NotImplementedError

    def build_optimizer(self, module: nn.Module, make_optimizer) -> torch.optim.Optimizer:
        return make_optimizer(module)

    def autocast(self):
        return contextlib.nullcontext()

    def gradient_sync(self, module: nn.Module, enabled: bool):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, module: nn.Module) -> None:
        loss.backward()

    def clip_grad_norm(self, module: nn.Module, max_norm: float) -> float | None:
        """Clip the gradients' global norm to max_norm; returns the norm before clipping. (DeepSpeed:
        its optimizer step computes the norm and clips, so there this sets the threshold, returns
        None, and its step() reads the norm after the update.)"""
        norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, module: nn.Module) -> None:
        """Update with the (clipped) gradients, then zero them."""
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def step(self, module: nn.Module, optimizer: torch.optim.Optimizer, *, max_norm: float,
             loss: float) -> tuple[float, bool]:
        """Clip to max_norm and update, unless `loss` (the step's all-reduced loss) or the global
        gradient norm is not finite on any rank: then this step's gradients are dropped and the
        weights and optimizer state stay as they were. Returns (pre-clip grad norm, skipped)."""
        grad_norm = float(self.clip_grad_norm(module, max_norm))
        skipped = self.any_rank(not (math.isfinite(loss) and math.isfinite(grad_norm)))
        if skipped:
            optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer_step(optimizer, module)
        return grad_norm, skipped

    def unwrap(self, module: nn.Module) -> nn.Module:
        """The module given to prepare() (strategies that wrap it in another object override this)."""
        return module

    # False (LoRA, exclude_frozen_from_checkpoints): checkpoints hold the trainable weights (and their
    # optimizer state) only; the frozen ones are rebuilt identically by the model build on resume.
    checkpoint_frozen = True

    def exclude_frozen_from_checkpoints(self) -> None:
        """Checkpoints of this run hold the trainable weights and their optimizer state only (LoRA:
        the adapters); frozen weights come back from the model build on resume."""
        self.checkpoint_frozen = False

    def checkpoint_options(self) -> StateDictOptions:
        # Not strict without the frozen weights: set_state_dict would miss them; DCP's load still
        # fails on any trainable weight the checkpoint lacks.
        return StateDictOptions(ignore_frozen_params=not self.checkpoint_frozen, strict=self.checkpoint_frozen)

    def save_model_optimizer(self, path: Path, module: nn.Module, optimizer) -> None:
        """Sharded model + optimizer state into the existing folder `path` (DCP; every rank calls this)."""
        model_sd, optim_sd = get_state_dict(module, optimizer, options=self.checkpoint_options())
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)

    def load_model_optimizer(self, path: Path, module: nn.Module, optimizer) -> None:
        """Load what save_model_optimizer wrote, resharding to this run's ranks (DCP; plain data only)."""
        model_sd, optim_sd = get_state_dict(module, optimizer, options=self.checkpoint_options())
        state = {"model": model_sd, "optim": optim_sd}
        dcp_load(state, path)
        set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=self.checkpoint_options())

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """Full weights in CPU memory on rank 0 (every rank calls this: gathering is collective)."""
        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        return pdist.all_reduce_sum(value)

    def all_reduce_data(self, value: torch.Tensor) -> torch.Tensor:
        """Sum of a per-micro-batch count (label tokens, real tokens, FLOPs) over the data-parallel
        replicas: the SP ranks of one group hold the same micro-batches, so each group counts once."""
        if self.sequence_parallel is None:
            return self.all_reduce_sum(value)
        return pdist.all_reduce_sum(value, group=self.sequence_parallel.data_group)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (a collective: every rank calls it)."""
        return pdist.any_rank(self, flag)

    def barrier(self) -> None:
        pdist.barrier()

    def teardown(self) -> None:
        pdist.destroy()
