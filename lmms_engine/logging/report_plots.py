"""The report's curves: one figure per metric, one line per run, drawn with matplotlib's Agg canvas.

matplotlib is imported inside `draw` only: `lmms-train` imports this module (through the end-of-run
report) and must not pay for matplotlib at start-up. Figures are made with the object-oriented API
(`matplotlib.figure.Figure` on a `FigureCanvasAgg`), never pyplot: no global state, no GUI backend.
Each Plot keeps the lines as matplotlib holds them after drawing, so what a page shows can be checked.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from lmms_engine.logging.report_runs import RunData, series

# metrics.jsonl key -> the plot's title; a metric no run has (mfu on CPU) gets no plot.
METRICS = {
    "loss": "loss",
    "eval_loss": "eval loss",
    "lr": "learning rate",
    "grad_norm": "grad norm (before clipping)",
    "tokens_per_s": "tokens/s",
    "mfu": "MFU",
    "peak_mem_gb": "peak memory (GB)",
}
MARKERS_UP_TO = 40  # points per line up to which each point is marked (eval loss, short runs)
MAX_LEGEND = 12  # runs beyond this many get no legend (it would hide the curves)


@dataclass
class Line:
    label: str
    steps: list[int]
    values: list[float]


@dataclass
class Plot:
    metric: str  # the metrics.jsonl key
    title: str
    lines: list[Line]  # as drawn: read back from the figure's axes
    png: bytes


def plot_metrics(runs: list[RunData]) -> list[Plot]:
    """One Plot per metric that some run logged, in METRICS order."""
    plots = []
    for metric, title in METRICS.items():
        lines = [Line(run.label, *series(run.rows, metric)) for run in runs]
        lines = [line for line in lines if line.steps]
        if lines:
            plots.append(draw(metric, title, lines))
    return plots


def draw(metric: str, title: str, lines: list[Line]) -> Plot:
    """Draw `lines` on one axes over the step; returns the lines read back from the axes and the PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for line in lines:
        marker = "o" if len(line.steps) <= MARKERS_UP_TO else None
        axes.plot(line.steps, line.values, label=line.label, marker=marker, markersize=3, linewidth=1.2)
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if 1 < len(lines) <= MAX_LEGEND:
        axes.legend(fontsize="small")
    drawn = [Line(str(a.get_label()), [int(s) for s in a.get_xdata()], [float(v) for v in a.get_ydata()])
             for a in axes.get_lines()]
    return Plot(metric=metric, title=title, lines=drawn, png=_png(figure))


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
