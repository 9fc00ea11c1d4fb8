"""The report as one self-contained HTML page: inline CSS, the curves as base64 PNGs (the page works
copied alone), and tables of the final figures, the config differences and the data statistics."""

from __future__ import annotations

import base64
import datetime
import html

from lmms_engine.logging.report_plots import Plot
from lmms_engine.logging.report_runs import RunData

ABSENT = "—"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.8em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.curves { display: flex; flex-wrap: wrap; gap: 1em; }
.curves img { max-width: 100%; border: 1px solid #eee; }
code { font-size: 0.9em; }
"""


def render_html(runs: list[RunData], plots: list[Plot], differences: dict[str, list], figures: dict[str, list]) -> str:
    sections = [
        f"<h1>lmms-engine report: {len(runs)} run{'s' if len(runs) != 1 else ''}</h1>",
        f"<p>written {datetime.datetime.now():%Y-%m-%d %H:%M:%S}</p>",
        _runs_table(runs),
        "<h2>Final figures</h2>" + _table(["", *_labels(runs)], _rows(figures)),
        "<h2>Curves</h2>" + _curves(plots),
        "<h2>Config differences</h2>" + _differences(runs, differences),
        "<h2>Data (data_stats.json)</h2>" + _data_stats(runs),
    ]
    body = "\n".join(sections)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>lmms-engine report</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def _labels(runs: list[RunData]) -> list[str]:
    return [run.label for run in runs]


def _runs_table(runs: list[RunData]) -> str:
    rows = [[html.escape(run.label), f"<code>{html.escape(str(run.path))}</code>"] for run in runs]
    return _table(["run", "directory"], rows, escape=False)


def _curves(plots: list[Plot]) -> str:
    if not plots:
        return "<p>No metrics logged yet.</p>"
    images = [f'<img alt="{html.escape(p.title)}" title="{html.escape(p.title)}" '
              f'src="data:image/png;base64,{base64.b64encode(p.png).decode("ascii")}">' for p in plots]
    return '<div class="curves">\n' + "\n".join(images) + "\n</div>"


def _differences(runs: list[RunData], differences: dict[str, list]) -> str:
    if len(runs) < 2:
        return "<p>One run: nothing to compare.</p>"
    if not differences:
        return "<p>The runs' composed configs (.hydra/config.yaml) are the same.</p>"
    return _table(["key", *_labels(runs)], _rows(differences))


def _data_stats(runs: list[RunData]) -> str:
    keys = list(dict.fromkeys(key for run in runs for key in run.data_stats))
    if not keys:
        return "<p>No data_stats.json.</p>"
    return _table(["", *_labels(runs)], _rows({key: [run.data_stats.get(key) for run in runs] for key in keys}))


def _rows(table: dict[str, list]) -> list[list[str]]:
    return [[name, *map(_cell, values)] for name, values in table.items()]


def _cell(value) -> str:
    if value is None:
        return ABSENT
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list[str]], escape: bool = True) -> str:
    def cell(tag: str, text: str) -> str:
        return f"<{tag}>{html.escape(text) if escape else text}</{tag}>"

    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    body = ["<tr>" + "".join(cell("td", text) for text in row) + "</tr>" for row in rows]
    return "<table>\n" + "\n".join([head, *body]) + "\n</table>"
