"""How the model is being built, as a strategy's `model_init_context()` says: whole (the default), or
partitioned over the ranks as each module is made (ZeRO-3's zero.Init, parallel/deepspeed_config.py).

The model builders read it (models/random_init.py: random weights drawn per gathered module when
partitioned) instead of asking DeepSpeed's or transformers' global state.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar

_PARTITIONED = ContextVar("lmms_engine_partitioned_build", default=False)


@contextlib.contextmanager
def partitioned_build():
    """Within: every module built is partitioned as soon as it is made (entered by the strategy's
    model_init_context, around the partitioning context itself)."""
    token = _PARTITIONED.set(True)
    try:
        yield
    finally:
        _PARTITIONED.reset(token)


def building_partitioned() -> bool:
    """True inside a strategy's model_init_context that partitions the model as it is built."""
    return _PARTITIONED.get()
