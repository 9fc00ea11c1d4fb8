"""End-to-end runs of the real composed config on CPU (tiny model, demo data)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmms_engine.checkpoint.manager import latest_checkpoint, load_checkpoint
from lmms_engine.parallel.single import SingleDevice
from lmms_engine.train.app import run
from lmms_engine.train.module import CausalLMWithLoss
from lmms_engine.train.optim import build_adamw
from tests.conftest import compose_config


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def twelve_step_run(_twelve_step_run):
    """A private copy of the config (tests set trainer.resume etc.), and the shared run directory."""
    cfg, run_dir = _twelve_step_run
    return copy.deepcopy(cfg), run_dir


@pytest.fixture(scope="module")
def _twelve_step_run(tmp_path_factory):
    """One 12-step run with checkpoints every 6 steps, shared by the tests below."""
    run_dir = tmp_path_factory.mktemp("run12")
    cache = tmp_path_factory.mktemp("cache")
    cfg = compose_config("trainer.max_steps=12", "trainer.save_every=6", f"data.cache_dir={cache}")
    run(cfg, run_dir)
    return cfg, run_dir


def test_run_directory_and_metrics_contract(twelve_step_run):
    _, run_dir = twelve_step_run
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 13))
    for key in ("step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "peak_mem_gb", "elapsed_s"):
        assert all(key in r for r in rows), key
    assert all(r["tokens"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_12", "step_6"]
    assert all((run_dir / "checkpoints" / s / "COMPLETE").is_file() for s in ("step_6", "step_12"))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (run_dir / "hf").iterdir()}
    assert json.loads((run_dir / "data_stats.json").read_text())["samples"] == 400


def test_resume_from_step_6_reproduces_steps_7_to_12(twelve_step_run, tmp_path):
    cfg, reference_dir = twelve_step_run
    run_dir = tmp_path / "resumed"
    shutil.copytree(reference_dir, run_dir)
    # As if the run had been killed right after its step-6 checkpoint.
    shutil.rmtree(run_dir / "checkpoints" / "step_12")
    shutil.rmtree(run_dir / "hf")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()[:6]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    cfg.trainer.resume = "auto"
    run(cfg, run_dir)
    resumed, reference = _metrics(run_dir), _metrics(reference_dir)
    assert [r["step"] for r in resumed] == list(range(1, 13))
    assert [r["loss"] for r in resumed[6:]] == [r["loss"] for r in reference[6:]]
    assert [r["grad_norm"] for r in resumed[6:]] == [r["grad_norm"] for r in reference[6:]]


def test_hf_export_loads_and_matches_trained_weights(twelve_step_run):
    cfg, run_dir = twelve_step_run
    bundle = instantiate(cfg.model, _convert_="all")
    module = CausalLMWithLoss(bundle.model, loss_fn=None)
    optimizer = build_adamw(module, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8)
    load_checkpoint(latest_checkpoint(run_dir / "checkpoints"), module, optimizer, SingleDevice(device="cpu"))
    exported = AutoModelForCausalLM.from_pretrained(run_dir / "hf")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "hf")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        expected = module.lm(input_ids=ids).logits
        got = exported(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}'
BAD_CASES = {
    "malformed_json": ('{"messages": [', "invalid JSON"),
    "no_messages": ('{"conversation": []}', "messages"),
    "unknown_role": ('{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}', "robot"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_record_stops_the_run_naming_file_and_line(case, tmp_path):
    bad_line, expected = BAD_CASES[case]
    data = _write_jsonl(tmp_path / "bad.jsonl", [GOOD] * 2 + [bad_line] + [GOOD] * 40)
    cfg = compose_config("data=sft", f"data.dataset_path={data}", f"data.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(ValueError) as err:
        run(cfg, tmp_path / "run")
    assert "bad.jsonl:3" in str(err.value) and expected in str(err.value)


def test_missing_file_stops_the_run(tmp_path):
    cfg = compose_config("data=sft", f"data.dataset_path={tmp_path / 'nope.jsonl'}", "data.on_error=skip")
    with pytest.raises(ValueError, match="nope.jsonl"):
        run(cfg, tmp_path / "run")


def test_skip_policy_goes_on_and_counts(tmp_path):
    lines = [GOOD] * 40 + [bad for bad, _ in BAD_CASES.values()]
    data = _write_jsonl(tmp_path / "mixed.jsonl", lines)
    cfg = compose_config("data=sft", f"data.dataset_path={data}", "data.on_error=skip", "trainer.max_steps=2",
                         "data.packing_length=128", f"data.cache_dir={tmp_path / 'cache'}", "trainer.export_hf=false")
    run_dir = run(cfg, tmp_path / "run")
    stats = json.loads((run_dir / "data_stats.json").read_text())
    assert stats["skipped"] == 3 and stats["samples"] == 40
    assert len(_metrics(run_dir)) == 2


def test_overlong_samples_are_dropped_and_counted(tmp_path):
    long = '{"messages": [{"role": "user", "content": "' + "x" * 400 + '"}, {"role": "assistant", "content": "ok"}]}'
    data = _write_jsonl(tmp_path / "long.jsonl", [GOOD] * 20 + [long] * 3)
    cfg = compose_config("data=sft", f"data.dataset_path={data}", "data.packing_length=256", "trainer.max_steps=1",
                         f"data.cache_dir={tmp_path / 'cache'}", "trainer.export_hf=false")
    run_dir = run(cfg, tmp_path / "run")
    stats = json.loads((run_dir / "data_stats.json").read_text())
    assert stats["dropped_overlong"] == 3 and stats["samples"] == 20


def test_resume_into_a_new_run_directory_from_a_checkpoint_path(twelve_step_run, tmp_path):
    cfg, reference_dir = twelve_step_run
    cfg.trainer.resume = str(reference_dir / "checkpoints" / "step_6")
    cfg.trainer.export_hf = False
    run(cfg, tmp_path / "new")
    resumed = _metrics(tmp_path / "new")
    assert [r["step"] for r in resumed] == list(range(7, 13))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in _metrics(reference_dir)[6:]]


def test_resume_from_a_missing_path_is_a_clear_error(twelve_step_run, tmp_path):
    cfg, _ = twelve_step_run
    cfg.trainer.resume = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no such checkpoint or run directory"):
        run(cfg, tmp_path / "new")
