"""`lmms-report RUN_DIR [RUN_DIR ...]`: a run (or the runs of a sweep) as one HTML page you can look at.

The page holds the curves over steps of loss, eval loss, learning rate, grad norm, tokens/s, MFU and
peak memory (one line per run), the final figures, the composed config's differences between the
runs and data_stats.json, beside one PNG per curve (`report/<metric>.png`). A multirun directory
stands for all its jobs. Every run writes its own `report.html` at the end (`trainer.report=true`,
main rank only, through `write_run_report`, which never fails a run).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lmms_engine.logging.report_html import render_html
from lmms_engine.logging.report_plots import Plot, plot_metrics
from lmms_engine.logging.report_runs import RunData, config_differences, final_figures, label_runs, load_run, run_dirs

log = logging.getLogger("lmms_engine.train")

REPORT_FILE = "report.html"
PNG_DIR = "report"


@dataclass
class Report:
    runs: list[RunData]
    plots: list[Plot]
    differences: dict[str, list]  # dotted config key -> each run's value, for the keys whose values differ
    figures: dict[str, list]  # final figure -> each run's value

    def html(self) -> str:
        return render_html(self.runs, self.plots, self.differences, self.figures)


def build_report(paths: Sequence[Path]) -> Report:
    """The report of the runs `paths` name (run directories, or multirun directories: their jobs)."""
    runs = [load_run(path) for path in run_dirs(paths)]
    differences = config_differences(runs)
    label_runs(runs, differences)
    return Report(runs=runs, plots=plot_metrics(runs), differences=differences, figures=final_figures(runs))


def write_report(report: Report, out_dir: Path) -> Path:
    """`out_dir/report.html` (self-contained) and `out_dir/report/<metric>.png`; returns the page's path."""
    png_dir = out_dir / PNG_DIR
    png_dir.mkdir(parents=True, exist_ok=True)
    for plot in report.plots:
        (png_dir / f"{plot.metric}.png").write_bytes(plot.png)
    page = out_dir / REPORT_FILE
    tmp = page.with_name(page.name + ".tmp")
    tmp.write_text(report.html(), encoding="utf-8")
    os.replace(tmp, page)  # a reader never sees half a page
    return page


def write_run_report(run_dir: Path) -> Path | None:
    """A run's own report at its end. A failure is one warning line: the run itself is done and fine."""
    try:
        page = write_report(build_report([run_dir]), run_dir)
    except Exception as err:  # plotting must never fail a run
        log.warning("report.html not written (%s: %s); the run is complete; try again with: lmms-report %s",
                    type(err).__name__, err, run_dir)
        return None
    log.info("report: %s", page)
    return page


def default_out_dir(paths: Sequence[Path]) -> Path:
    """The one directory given, else the directories' common parent (`outputs/tiny` for `outputs/tiny/multirun_*`)."""
    if len(paths) == 1:
        return Path(paths[0])
    return Path(os.path.commonpath([Path(p).resolve() for p in paths]))


def main(argv: Sequence[str] | None = None) -> None:
    """Console script `lmms-report`."""
    parser = argparse.ArgumentParser(prog="lmms-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run directories (outputs/<name>/<stamp>) or multirun directories (each of their jobs)")
    parser.add_argument("-o", "--out", type=Path, default=None,
                        help="where report.html and report/*.png go (default: the one directory given, else the common parent)")
    args = parser.parse_args(argv)
    try:
        page = write_report(build_report(args.runs), args.out or default_out_dir(args.runs))
    except ValueError as err:  # a path that is no run: one line
        print(f"lmms-report: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(page)
