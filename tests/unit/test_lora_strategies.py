"""LoRA under the wrapping strategies, in one gloo process: the frozen base is stored in the compute
dtype (bf16: forced here on CPU, where users get fp32) with no gradient and no optimizer state; the
adapters stay fp32 and are the optimizer's only parameters; the adapters' init depends on the seed
alone (every rank and strategy starts from the same adapters); checkpoints hold the adapters only.

(Loss parity of 2 ranks with one process: tests/distributed/test_lora_ranks.py.)
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.tensor import DTensor

from lmms_engine.config import LoraSettings
from lmms_engine.models.qwen2 import build_qwen2
from lmms_engine.models.qwen2_5_vl import build_qwen2_5_vl
from lmms_engine.parallel import dist as pdist
from lmms_engine.parallel.ddp import DDP
from lmms_engine.parallel.fsdp2 import FSDP2
from lmms_engine.train.lora import apply_lora, is_adapter, store_frozen
from lmms_engine.train.module import CausalLMWithLoss
from lmms_engine.train.optim import build_adamw
from tests.unit.test_packed_parity import TINY
from tests.unit.test_vl_model import _preset

LORA = LoraSettings(rank=4, alpha=8.0)
IDS = torch.tensor([[5, 17, 200, 3, 9, 41, 77, 120]])


def _summed_ce(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.T).float()
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")


def _lora_bundle(seed: int = 0, frozen_dtype: torch.dtype | None = None, draws_before: int = 0):
    torch.manual_seed(seed)
    bundle = build_qwen2(name="t", config=TINY)
    torch.randn(draws_before)  # the RNG state the strategy's model build left behind
    apply_lora(bundle.model, LORA, bundle.components(), seed=seed, frozen_dtype=frozen_dtype)
    return bundle


def _adapters(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if is_adapter(n)}


def test_adapter_init_depends_on_the_seed_only():
    reference = _adapters(_lora_bundle(seed=3).model)
    after_other_draws = _adapters(_lora_bundle(seed=3, draws_before=1000).model)
    assert reference.keys() == after_other_draws.keys()
    assert all(torch.equal(reference[n], after_other_draws[n]) for n in reference)
    other_seed = _adapters(_lora_bundle(seed=4).model)
    assert any(not torch.equal(reference[n], other_seed[n]) for n in reference if ".lora_A." in n)


def test_frozen_base_is_stored_in_the_compute_dtype_and_adapters_in_fp32():
    model = _lora_bundle(frozen_dtype=torch.bfloat16).model
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if is_adapter(n)} == {torch.float32}
    assert {d for n, d in dtypes.items() if not is_adapter(n)} == {torch.bfloat16}
    assert store_frozen(model, torch.bfloat16) == 0  # nothing left to cast


@pytest.fixture
def one_rank_gloo(tmp_path):
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    pdist.destroy()  # frees the groups (a wrapped model's cycles hold them) and joins their threads
    assert pdist.process_group_threads() == []


def _bf16(strategy):
    """The strategy with bf16 compute (users get it on CUDA only; CPU bf16 runs, slowly, for this test)."""
    strategy.dtype = torch.bfloat16
    return strategy


def _train_one_step(strategy, tmp_path):
    strategy.setup()
    bundle = _lora_bundle(frozen_dtype=strategy.frozen_dtype())
    strategy.checkpoint_frozen = False
    module = strategy.prepare(CausalLMWithLoss(bundle.model, _summed_ce, bundle.hidden_states), bundle.shard_units,
                              bundle.encoder_units)
    optimizer = strategy.build_optimizer(
        module, lambda m: build_adamw(m, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8))
    with strategy.autocast():
        loss = module(labels=IDS, input_ids=IDS, position_ids=torch.arange(IDS.shape[1])[None])
    strategy.backward(loss, module)
    grad_norm, skipped = strategy.step(module, optimizer, max_norm=1.0, loss=loss.item())
    assert torch.isfinite(loss) and not skipped and grad_norm > 0
    strategy.save_model_optimizer(tmp_path / "ckpt", module, optimizer)
    return module, optimizer


@pytest.mark.parametrize("make", [lambda: FSDP2(device="cpu"), lambda: DDP(device="cpu")], ids=["fsdp2", "ddp"])
def test_wrapped_lora_keeps_a_bf16_base_without_grads_or_optimizer_state(make, one_rank_gloo, tmp_path):
    (tmp_path / "ckpt").mkdir()
    strategy = _bf16(make())
    try:
        module, optimizer = _train_one_step(strategy, tmp_path)
        named = dict(module.named_parameters())
        adapters = {n for n in named if is_adapter(n)}
        assert adapters and {named[n].dtype for n in adapters} == {torch.float32}
        frozen = set(named) - adapters
        assert {named[n].dtype for n in frozen} == {torch.bfloat16}
        assert all(named[n].grad is None and not named[n].requires_grad for n in frozen)
        if strategy.name == "fsdp2":
            assert all(isinstance(p, DTensor) for p in named.values())
        in_state = {id(p) for p in optimizer.state}
        assert in_state == {id(named[n]) for n in adapters}  # Adam moments for the adapters only
        assert {s["exp_avg"].dtype for s in optimizer.state.values()} == {torch.float32}
        saved = FileSystemReader(str(tmp_path / "ckpt")).read_metadata().state_dict_metadata
        weights = [k for k in saved if k.startswith("model.")]
        # lm_head: the tied embedding's second name, which torch's ignore_frozen_params does not see
        assert weights and all(".lora_" in k or k == "model.lm.lm_head.weight" for k in weights)
        assert not any(k.startswith("optim.") and ".lora_" not in k and "param_groups" not in k for k in saved)
    finally:
        strategy.teardown()


def test_component_lr_applies_to_each_components_adapters():
    """Adapters in the decoder and the vision tower: one lr per component, adapters only in the groups."""
    built = build_qwen2_5_vl(**_preset("tiny_qwen2_5_vl"))
    apply_lora(built.model, LoraSettings(rank=2, alpha=4.0, target_modules=["q_proj", "qkv", "proj"],
                                         components=["lm", "vision"]), built.components())
    optimizer = build_adamw(built.model, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8,
                            components=built.components(), component_lr={"vision": 1e-4})
    scales = {g["component"]: g["lr_scale"] for g in optimizer.param_groups}
    assert scales == {"lm": 1.0, "vision": pytest.approx(0.1)}
    named = {id(p): n for n, p in built.model.named_parameters()}
    grouped = [named[id(p)] for g in optimizer.param_groups for p in g["params"]]
    assert grouped and all(is_adapter(n) for n in grouped)
    assert any(n.startswith(built.components()["vision"][0]) for n in grouped)
