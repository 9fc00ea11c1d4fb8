"""The eval loss of 2 gloo ranks (fsdp2, zero3) equals one process's, through the real entry point.

The eval data (data.eval_fraction=0.02: 8 held-out records, 3 packs) splits unevenly over two ranks,
so one rank also runs the dummy forward that keeps sharded strategies' collectives in step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.distributed.test_strategies import needs_deepspeed, torchrun, train_single

EVAL = ["trainer.max_steps=2", "trainer.save_every=0", "trainer.eval_every=1", "data.eval_fraction=0.02"]


def _eval_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step"], "eval_loss": r["eval_loss"], "eval_tokens": r["eval_tokens"]} for r in rows]


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token_cache")


@pytest.fixture(scope="module")
def single_eval(tmp_path_factory, token_cache) -> list[dict]:
    return _eval_rows(train_single(tmp_path_factory.mktemp("single") / "run", token_cache, "model=tiny", "data=demo",
                                   "trainer.grad_accum=2", *EVAL))


@pytest.mark.parametrize("parallel", ["fsdp2", pytest.param("zero3", marks=needs_deepspeed)])
@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_eval_loss_matches_one_process(parallel, single_eval, tmp_path, token_cache):
    got = _eval_rows(torchrun(tmp_path, token_cache, f"parallel={parallel}", "model=tiny", "data=demo", *EVAL))
    assert [r["step"] for r in got] == [1, 2]
    assert [r["eval_tokens"] for r in got] == [r["eval_tokens"] for r in single_eval]  # every eval token once
    assert [r["eval_loss"] for r in got] == pytest.approx([r["eval_loss"] for r in single_eval], abs=1e-4)
