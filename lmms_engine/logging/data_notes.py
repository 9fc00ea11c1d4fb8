"""Warnings about the prepared data that a user should see on the console, not only in data_stats.json."""

from __future__ import annotations

import logging

log = logging.getLogger("lmms_engine.train")


def dropped_overlong_warning(stats: dict, packing_length: int | None) -> str | None:
    """The warning for samples dropped as longer than `packing_length`, or None when none were."""
    dropped = stats.get("dropped_overlong", 0)
    if not dropped:
        return None
    return (f"{dropped} sample(s) were dropped as longer than "
            f"data.packing_length={packing_length} tokens (counted in data_stats.json); to train on them raise "
            f"data.packing_length or set data.overlong=truncate")


def warn_about_data(stats: dict, packing_length: int | None) -> None:
    """Log what the data preparation silently set aside (dropped overlong samples)."""
    message = dropped_overlong_warning(stats, packing_length)
    if message is not None:
        log.warning(message)
