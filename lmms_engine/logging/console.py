"""The console log handler: rich on a terminal, one plain line per record anywhere else.

rich wraps a log line at the console width, and when the output is not a terminal (CI logs, `tee`,
cluster log files) that width is 80 columns: an error message is cut over several lines and `tail -1`
shows a fragment. Off a terminal each record is therefore written whole on one line, at any width,
as train.log (a plain FileHandler) already keeps it.
"""

from __future__ import annotations

import logging
from datetime import datetime

from rich.logging import RichHandler

LEVEL_WIDTH = 8  # rich's level column: "WARNING " and "ERROR   " line up as they do on a terminal


class ConsoleHandler(RichHandler):
    """`conf/hydra/job_logging/lmms.yaml`'s console handler (RichHandler's arguments)."""

    def emit(self, record: logging.LogRecord) -> None:
        if self.console.is_terminal:
            super().emit(record)
            return
        try:
            self.console.file.write(plain_line(record, record.getMessage()) + "\n")
            self.console.file.flush()
        except Exception:  # logging must never raise into the training loop
            self.handleError(record)


def plain_line(record: logging.LogRecord, message: str) -> str:
    """`[date time] LEVEL    message` (rich's columns, no wrapping); a traceback follows on its own lines."""
    stamp = datetime.fromtimestamp(record.created).strftime("%x %X")
    line = f"[{stamp}] {record.levelname:<{LEVEL_WIDTH}} {message}"
    if record.exc_info:
        line += "\n" + logging.Formatter().formatException(record.exc_info)
    return line
