"""Errors raised while reading and tokenizing training data.

Every user-facing error is a `ValueError` subclass whose message starts with where the problem is,
so a user can open the file at the right line:

    data/foo.jsonl:17: record has no 'messages' key
"""

from __future__ import annotations

from typing import Any

# Longest repr of a record's value quoted in an error message: enough for any real path, while a
# junk value (a 1 MB role, an inline data: URL) is cut.
MAX_QUOTED_CHARS = 300


class DataError(ValueError):
    """A bad record: `where` is `file:line` (jsonl, 1-based) or `file#index` (0-based record).

    `reason` is a short stable key (like `no_messages`) used to count skipped records by kind.
    """

    def __init__(self, where: str, reason: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.reason = reason
        self.problem = problem

    def __reduce__(self):
        # Keeps the error picklable (worker processes) despite the three-argument constructor.
        return (type(self), (self.where, self.reason, self.problem))


class DataSourceError(DataError):
    """A configuration mistake (missing file, unknown data_type, bad dataset yaml).

    Never skipped by `on_error=skip`: a missing source is not a bad record, it is a wrong config.
    """

    def __init__(self, where: str, problem: str):
        super().__init__(where, "source", problem)

    def __reduce__(self):
        return (type(self), (self.where, self.problem))


class TemplateError(ValueError):
    """The tokenizer's chat template cannot be used for label masking (not prefix-stable, or it
    does not close assistant turns with an end-of-turn token). Never skipped: it affects every
    record, so skipping would silently drop the whole data set."""


def too_few_samples(where: str, usable: int, *, packing: bool, micro_batch_size: int, packing_length: int,
                    overlong: str, skipped: dict[str, int], overlong_counts: dict[str, int],
                    length_range: tuple[int, int] | None) -> DataSourceError:
    """The one line for data that leaves no sample to train on (or, padded, fewer than a micro-batch),
    saying why and what to change. `length_range`: the shortest and longest sample in tokens, before
    the overlong policy."""
    reasons = []
    if skipped:
        reasons.append(f"{sum(skipped.values())} records were skipped as bad ({', '.join(f'{k}: {v}' for k, v in skipped.items())})")
    dropped = overlong_counts.get("dropped_overlong", 0)
    if dropped:
        reasons.append(f"{dropped} samples were longer than data.packing_length={packing_length} tokens and dropped")
    if dropped and length_range is not None:
        shortest, longest = length_range
        fix = (f"set data.packing_length>={longest} (the longest sample; the shortest has {shortest} tokens)"
               + (" or data.overlong=truncate" if overlong == "drop" else ""))
    elif not packing and usable:
        reasons.append(f"a padded micro-batch holds data.micro_batch_size={micro_batch_size} samples")
        fix = "lower data.micro_batch_size or add data"
    else:
        fix = "fix the records (data.on_error=raise stops at the first bad one, naming its line)"
    return DataSourceError(where, f"only {usable} usable samples: {'; '.join(reasons) or 'the data is empty'}; {fix}")


def shorten(value: Any) -> str:
    """`repr(value)` for an error message, cut to MAX_QUOTED_CHARS (junk can be huge or nested)."""
    text = repr(value)
    if len(text) <= MAX_QUOTED_CHARS:
        return text
    return f"{text[:MAX_QUOTED_CHARS]}... ({len(text)} characters)"
