"""trainer.epochs (an alternative to trainer.max_steps) and optim.warmup_ratio: steps derived from the data."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from lmms_engine.config import validate
from lmms_engine.data.dataset import SFTDataset
from lmms_engine.train.app import run
from lmms_engine.train.run_length import check_run_length, resolve_run_length, steps_per_epoch
from lmms_engine.train.schedule import lr_at
from tests.conftest import compose_config

DEMO_TEXT = Path(__file__).resolve().parents[2] / "lmms_engine" / "data" / "demo" / "text_chat.jsonl"


class _Batches:
    """A dataset stand-in with `count` micro-batches per epoch."""

    def __init__(self, count: int):
        self.count = count

    def micro_batches(self, epoch: int) -> list[list[int]]:
        return [[i] for i in range(self.count)]


@pytest.mark.parametrize(("grad_accum", "world_size", "steps"), [(1, 1, 7), (2, 1, 3), (1, 2, 3), (3, 2, 1)])
def test_an_epoch_is_the_whole_steps_of_its_micro_batches(grad_accum, world_size, steps):
    assert steps_per_epoch(_Batches(7), grad_accum, world_size) == steps


def test_too_few_micro_batches_for_one_step_is_a_clear_error():
    with pytest.raises(ValueError, match=r"yields 7 micro-batches per epoch, fewer than one step needs \(grad_accum 4 x 2"):
        steps_per_epoch(_Batches(7), 4, 2)


def test_epochs_and_warmup_ratio_become_step_counts(caplog):
    rc = validate(compose_config("trainer.max_steps=null", "trainer.epochs=3", "trainer.grad_accum=2",
                                 "optim.warmup_steps=null", "optim.warmup_ratio=0.1"))
    with caplog.at_level(logging.INFO, logger="lmms_engine.train"):
        resolved = resolve_run_length(rc, _Batches(9), world_size=2)
    assert (resolved.trainer.max_steps, resolved.optim.warmup_steps) == (6, 1)  # 3 x (9 // 4); ceil(0.6)
    assert (rc.trainer.max_steps, rc.optim.warmup_steps) == (None, None)  # the validated config is left as it was
    assert "trainer.epochs=3: 9 micro-batches per epoch / (grad_accum 2 x 2 ranks) = 2 steps per epoch -> 6" in caplog.text


def test_max_steps_run_is_unchanged():
    rc = validate(compose_config("trainer.max_steps=5", "optim.warmup_steps=2"))
    resolved = resolve_run_length(rc, _Batches(1), world_size=1)
    assert (resolved.trainer.max_steps, resolved.optim.warmup_steps) == (5, 2)


def test_epochs_of_a_stream_are_refused_before_anything_is_built():
    rc = validate(compose_config("trainer.max_steps=null", "trainer.epochs=1", "data.streaming=true"))
    with pytest.raises(ValueError, match="trainer.epochs needs the data set's size, which data.streaming=true"):
        check_run_length(rc)


@pytest.mark.parametrize(("overrides", "message"), [
    (["trainer.epochs=2", "trainer.max_steps=10"], r"trainer.max_steps=10 and trainer.epochs=2 are alternatives"),
    (["trainer.max_steps=null"], r"trainer.max_steps and trainer.epochs are both null"),
    (["trainer.max_steps=null", "trainer.epochs=0"], r"trainer.epochs must be >= 1, got 0"),
    (["optim.warmup_ratio=0.1", "optim.warmup_steps=3"], r"optim.warmup_steps=3 and optim.warmup_ratio=0.1"),
    (["optim.warmup_steps=null", "optim.warmup_ratio=1.5"], r"optim.warmup_ratio must be in \[0, 1\), got 1.5"),
])
def test_run_length_mistakes_name_the_keys(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate(compose_config(*overrides))


def test_setting_epochs_alone_replaces_the_default_max_steps():
    rc = validate(compose_config("trainer.epochs=2", shrink=False))
    assert (rc.trainer.epochs, rc.trainer.max_steps) == (2, None)


def test_linear_schedule_decays_from_the_end_of_warmup_to_the_floor():
    lrs = [lr_at(s, lr=1.0, schedule="linear", warmup_steps=2, max_steps=10, min_lr_ratio=0.0, decay_ratio=0.2)
           for s in range(1, 11)]
    assert lrs == pytest.approx([0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0])


def test_two_epochs_train_on_every_sample_exactly_twice(tmp_path, monkeypatch, caplog):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(DEMO_TEXT.read_text().splitlines(keepends=True)[:10]))
    seen: list[int] = []
    collate = SFTDataset.collate

    def recording(self, indices):
        seen.extend(indices)
        return collate(self, indices)

    monkeypatch.setattr(SFTDataset, "collate", recording)
    cfg = compose_config(f"data.dataset_path={data}", "data.packing_length=256", f"data.cache_dir={tmp_path / 'cache'}", "data.num_proc=1",
                         "trainer.max_steps=null", "trainer.epochs=2", "trainer.export_hf=false", "trainer.save_final=false")
    with caplog.at_level(logging.INFO, logger="lmms_engine.train"):
        run_dir = run(cfg, tmp_path / "run")
    stats = json.loads((run_dir / "data_stats.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert stats["packs"] > 1 and len(rows) == 2 * stats["packs"]  # grad_accum 1, one rank: a step per pack
    assert Counter(seen) == {i: 2 for i in range(stats["samples"])}
    assert f"trainer.epochs=2: {stats['packs']} micro-batches per epoch" in caplog.text
