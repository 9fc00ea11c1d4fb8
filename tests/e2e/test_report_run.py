"""`lmms-train` leaves report.html in every run directory and `lmms-report` compares the runs of a
sweep, on real runs of the tiny model: a LoRA sweep set in the plain dotted form
(`-m optim.lora.rank=4,8 optim.lora.alpha=16`), which also shows that those keys train LoRA."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from lmms_engine.logging.report import build_report, main, write_report
from tests.cli_runs import train_cli

SWEEP = ["-m", "model=tiny", "data=demo", "optim.lora.rank=4,8", "optim.lora.alpha=16", "optim.lr=1e-2",
         "trainer.max_steps=3", "trainer.export_hf=false", "trainer.save_final=false", "data.packing_length=256",
         "data.eval_fraction=0.05", "trainer.eval_every=2", "data.num_proc=1"]
PLOTTED = ["loss", "eval_loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_gb"]  # mfu: null on CPU, no plot


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """The multirun directory of two 3-step LoRA runs (one process, ~20 s on 2 cores)."""
    root = tmp_path_factory.mktemp("report_runs")
    result = train_cli([*SWEEP, f"output_root={root}"], root)
    assert result.returncode == 0, result.stderr[-3000:]
    (multirun,) = (root / "tiny").glob("multirun_*")
    return multirun


def _jobs(multirun: Path) -> list[Path]:
    return sorted(p.parent for p in multirun.glob("*/metrics.jsonl"))


def test_dotted_lora_keys_train_lora(sweep):
    for job, rank in zip(_jobs(sweep), (4, 8), strict=True):
        lora = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["optim"]["lora"]
        assert (lora["rank"], lora["alpha"]) == (rank, 16)
        assert re.search(rf"LoRA rank {rank} on 28 layers", (job / "train.log").read_text())
        assert len((job / "metrics.jsonl").read_text().splitlines()) == 3


def test_every_run_leaves_its_own_report(sweep):
    for job in _jobs(sweep):
        report = build_report([job])
        assert (job / "report.html").is_file() and sorted((job / "report").iterdir()) == sorted(
            job / "report" / f"{metric}.png" for metric in PLOTTED)
        assert [p.metric for p in report.plots] == PLOTTED  # a metric no run logged (mfu on CPU) is left out
        assert all(len(p.lines) == 1 for p in report.plots)
        assert report.differences == {}


def test_a_sweep_gives_one_line_per_run_per_metric_and_the_swept_key(sweep, capsys):
    main([str(sweep)])
    assert capsys.readouterr().out.strip() == str(sweep / "report.html")
    report = build_report([sweep])
    assert [run.label for run in report.runs] == ["optim.lora.rank=4", "optim.lora.rank=8"]
    assert report.differences == {"optim.lora.rank": [4, 8]}
    for plot in report.plots:
        assert [line.label for line in plot.lines] == ["optim.lora.rank=4", "optim.lora.rank=8"], plot.metric
        expected = [2, 3] if plot.metric == "eval_loss" else [1, 2, 3]
        assert all(line.steps == expected for line in plot.lines), plot.metric
    assert report.figures["last step"] == [3, 3] and report.figures["final eval loss"][0] is not None


def test_the_page_is_self_contained(sweep):
    main([str(sweep)])
    page = (sweep / "report.html").read_text()
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == len(PLOTTED) and all(src.startswith("data:image/png;base64,") for src in images)
    assert base64.b64decode(images[0].split(",", 1)[1]) == (sweep / "report" / "loss.png").read_bytes()
    assert "<td>optim.lora.rank</td><td>4</td><td>8</td>" in page
    assert "<td>dropped_overlong</td>" in page and "<td>eval.samples</td>" in page  # data_stats.json, nested keys flat


def test_a_killed_and_resumed_run_is_one_continuous_curve(sweep, tmp_path):
    """metrics.jsonl as a run killed after step 6 and resumed from step 3 leaves it: steps 1..6, then 4..10."""
    run_dir = tmp_path / "resumed"
    shutil.copytree(_jobs(sweep)[0], run_dir)
    template = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    first = [{**template, "step": s, "loss": 10.0 - s} for s in range(1, 7)]
    second = [{**template, "step": s, "loss": 20.0 - s} for s in range(4, 11)]
    lines = [json.dumps(row) for row in first + second]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:6] + ['{"step": 7, "lo'] + lines[6:]) + "\n")  # a cut line
    report = build_report([run_dir])
    (loss,) = next(p for p in report.plots if p.metric == "loss").lines
    assert loss.steps == list(range(1, 11))
    assert loss.values == [9.0, 8.0, 7.0, 16.0, 15.0, 14.0, 13.0, 12.0, 11.0, 10.0]  # the resumed run's rows win
    assert write_report(report, run_dir) == run_dir / "report.html"
