"""Validation: the held-out split (data.eval_fraction), the config checks, and train/evaluate.py's
token-weighted eval loss, the same whatever the packing, micro-batch layout or world size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmms_engine.config import validate
from lmms_engine.data.collate import collate_packed, collate_padded
from lmms_engine.data.dataset import build_sft_dataset
from lmms_engine.data.settings import DataSettings
from lmms_engine.data.holdout import held_out_records
from lmms_engine.models.tokenizer import build_byte_tokenizer
from lmms_engine.parallel.single import SingleDevice
from lmms_engine.train.evaluate import evaluate
from lmms_engine.train.loop import StepContext
from tests.conftest import compose_config
from tests.unit.test_packed_parity import _module, _samples

LENGTHS = (17, 40, 5, 33, 21, 8, 30)


# ---- the held-out split ----

def test_held_out_records_are_a_stable_ceil_fraction_of_the_records():
    keys = [f"data.jsonl:{i}" for i in range(101)]
    held = held_out_records(keys, 0.1)
    assert len(held) == 11 and list(held) == sorted(set(held.tolist()))
    assert held_out_records(list(reversed(keys)), 0.1).tolist() == sorted(100 - held)  # by record, not position
    assert set(held_out_records(keys, 0.2).tolist()) > set(held.tolist())  # a larger fraction holds out more
    assert held_out_records(keys, 0.0).size == 0


def test_eval_fraction_records_are_never_trained_on(data_cache):
    cfg, tokenizer = compose_config(), build_byte_tokenizer()
    dataset = build_sft_dataset(tokenizer, DataSettings(cfg.data.dataset_path, packing_length=512, eval_fraction=0.05))
    eval_data = dataset.eval_data
    trained = {dataset[i].sample_id for epoch in range(2) for mb in dataset.micro_batches(epoch) for i in mb}
    held = {eval_data[i].sample_id for mb in eval_data.eval_micro_batches() for i in mb}
    assert len(held) == eval_data.num_samples == 20  # ceil(0.05 * 400), each once
    assert trained.isdisjoint(held)
    assert len(trained) + len(held) == 400
    again = build_sft_dataset(tokenizer, DataSettings(cfg.data.dataset_path, packing_length=512, eval_fraction=0.05), seed=7)
    assert {again.eval_data[i].sample_id for i in range(again.eval_data.num_samples)} == held  # seed-independent


# ---- config checks ----

@pytest.mark.parametrize("overrides, match", [
    (["data.eval_path=x.jsonl", "data.eval_fraction=0.1"], "both set"),
    (["data.eval_fraction=1.0"], r"eval_fraction must be in \[0, 1\)"),
    (["trainer.eval_every=5"], "no eval data"),
    (["trainer.eval_every=-1", "data.eval_fraction=0.1"], "eval_every must be >= 0"),
])
def test_eval_config_mistakes_are_one_clear_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        validate(compose_config(*overrides))


def test_eval_fraction_with_streaming_is_refused(data_cache):
    with pytest.raises(ValueError, match="data.eval_path"):
        build_sft_dataset(None, DataSettings("unused.jsonl", streaming=True, eval_fraction=0.1))


# ---- evaluate() ----

class _EvalData:
    """The samples, split into micro-batches of `sizes`, packed or padded."""

    def __init__(self, samples, sizes, packed: bool):
        bounds = np.cumsum([0, *sizes])
        self.samples, self.packed = samples, packed
        self.layout = [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def eval_micro_batches(self):
        return self.layout

    def collate(self, indices):
        chosen = [self.samples[i] for i in indices]
        return collate_packed(chosen) if self.packed else collate_padded(chosen, pad_token_id=257)


class _Rank(SingleDevice):
    """Rank `rank` of a pretend world: all_reduce_sum returns the local sums (added by the test)."""

    def __init__(self, rank: int, world_size: int):
        super().__init__(device="cpu")
        self.rank, self.world_size = rank, world_size


def _ctx(strategy, packed: bool) -> StepContext:
    module, patcher = _module(padding_free=packed)
    return StepContext(module=module, optimizer=None, strategy=strategy, collate=None,
                       attention_kwargs=patcher.attention_kwargs, flops_fn=lambda b: 0.0)


def _reference(samples) -> tuple[float, int]:
    module, patcher = _module(padding_free=True)
    with torch.no_grad():
        total = sum(module(labels=b.labels, **b.model_inputs(("input_ids", "position_ids")), **patcher.attention_kwargs(b))
                    for b in (collate_packed([s]) for s in samples))
    tokens = sum(int((s.labels[1:] != -100).sum()) for s in samples)
    return total.item() / tokens, tokens


def test_eval_loss_is_token_weighted_and_layout_independent():
    samples = _samples(LENGTHS)
    expected, tokens = _reference(samples)
    for packed, sizes in [(True, (3, 4)), (True, (7,)), (False, (2, 2, 2, 1)), (False, (7,))]:
        ctx = _ctx(_Rank(0, 1), packed)
        result = evaluate(ctx, _EvalData(samples, sizes, packed))
        assert result["eval_tokens"] == tokens
        assert result["eval_loss"] == pytest.approx(expected, rel=1e-5), (packed, sizes)
        assert ctx.module.training  # back in training mode


def test_eval_loss_over_two_ranks_sums_to_the_one_rank_value():
    """5 micro-batches on 2 ranks: rank 0 takes 0, 2, 4; rank 1 takes 1, 3 and runs 0 again (dropped)."""
    samples = _samples(LENGTHS)
    expected, tokens = _reference(samples)
    data = _EvalData(samples, (2, 1, 2, 1, 1), packed=True)
    parts = [evaluate(_ctx(_Rank(rank, 2), True), data) for rank in (0, 1)]
    assert sum(p["eval_tokens"] for p in parts) == tokens
    loss_sum = sum(p["eval_loss"] * p["eval_tokens"] for p in parts)
    assert loss_sum / tokens == pytest.approx(expected, rel=1e-5)


def test_evaluate_runs_without_gradients():
    samples = _samples(LENGTHS)
    ctx = _ctx(_Rank(0, 1), True)
    evaluate(ctx, _EvalData(samples, (7,), True))
    assert all(p.grad is None for p in ctx.module.parameters())
