"""Best-fit-decreasing packing and the overlong policies."""

import json

import numpy as np
import pytest

from lmms_engine.data.dataset import build_sft_dataset
from lmms_engine.data.settings import DataSettings
from lmms_engine.data.packing import apply_overlong, pack_best_fit_decreasing
from lmms_engine.models.tokenizer import build_byte_tokenizer


def first_fit_in_order(lengths, capacity):
    """The naive baseline: append to the current pack until it is full."""
    packs, used = [], capacity + 1
    for n in lengths:
        if used + n > capacity:
            packs.append(0)
            used = 0
        used += n
    return len(packs)


@pytest.mark.parametrize("case", range(40))
def test_every_sample_once_and_no_bin_over_capacity(case):
    rng = np.random.default_rng(case)
    capacity = int(rng.integers(100, 300))
    lengths = rng.integers(1, 101, size=int(rng.integers(0, 300)))
    bins = pack_best_fit_decreasing(lengths, capacity)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    assert all(0 < lengths[b].sum() <= capacity for b in bins)
    assert bins == pack_best_fit_decreasing(lengths, capacity)  # deterministic
    # A later bin was opened only because its first sample fitted in no earlier bin, so no two
    # bins could be merged: the two emptiest bins together overflow.
    fills = sorted(int(lengths[b].sum()) for b in bins)
    assert len(fills) < 2 or fills[0] + fills[1] > capacity


def test_best_fit_example_and_fewer_bins_than_naive_packing():
    assert pack_best_fit_decreasing(np.array([6, 5, 4, 3, 2]), 10) == [[0, 2], [1, 3, 4]]
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 1500, size=2000)
    bfd = len(pack_best_fit_decreasing(lengths, 2048))
    assert bfd < first_fit_in_order(lengths, 2048)
    assert lengths.sum() / (bfd * 2048) > 0.97  # near-perfect fill


def test_pack_rejects_overlong_and_empty_samples():
    with pytest.raises(ValueError, match="overlong policy first"):
        pack_best_fit_decreasing(np.array([3, 11]), 10)
    with pytest.raises(ValueError, match="positive"):
        pack_best_fit_decreasing(np.array([3]), 0)


def test_apply_overlong_drop_and_truncate_counts():
    lengths = np.array([5, 12, 8, 20])
    trained = np.array([True, True, True, False])  # sample 3 has no trained token in its first 10
    dropped = apply_overlong(lengths, trained, 10, "drop")
    assert dropped.keep.tolist() == [0, 2] and dropped.dropped == 2 and dropped.truncated == 0
    cut = apply_overlong(lengths, trained, 10, "truncate")
    assert cut.keep.tolist() == [0, 1, 2] and cut.lengths.tolist() == [5, 10, 8]
    assert cut.truncated == 1 and cut.dropped == 1
    with pytest.raises(ValueError, match="overlong must be one of"):
        apply_overlong(lengths, trained, 10, "wrap")


def test_dataset_overlong_policies(tmp_path):
    tokenizer = build_byte_tokenizer()
    short = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    long_answer = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x" * 200}]
    }
    long_prompt = {
        "messages": [{"role": "user", "content": "y" * 200}, {"role": "assistant", "content": "a"}]
    }
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [short, long_answer, long_prompt, short]) + "\n")
    common = {"packing_length": 100, "num_proc": 1, "cache_dir": tmp_path / "cache"}
    dropped = build_sft_dataset(tokenizer, DataSettings(path, overlong="drop", **common))
    assert (
        dropped.num_samples == 2
        and dropped.stats["dropped_overlong"] == 2
        and dropped.stats["truncated"] == 0
    )
    cut = build_sft_dataset(tokenizer, DataSettings(path, overlong="truncate", **common))
    # The long answer is cut to 100 tokens (still trained); the long prompt would train nothing: dropped.
    assert cut.num_samples == 3 and cut.stats["truncated"] == 1 and cut.stats["dropped_overlong"] == 1
    truncated = [cut[i] for i in range(3) if len(cut[i]) == 100]
    assert len(truncated) == 1 and (truncated[0].labels != -100).any()
    assert all(sum(len(cut[i]) for i in pack) <= 100 for pack in cut.packs)
