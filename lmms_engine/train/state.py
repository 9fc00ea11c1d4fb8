"""Everything besides weights and optimizer that a resumed run needs to continue exactly."""

from __future__ import annotations

import random

import numpy as np
import torch


def capture_rng() -> dict:
    """RNG states as tensors and plain values, loadable with torch.load(weights_only=True)."""
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state_as_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(_as_python_state(state["python"]))
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _numpy_state_as_plain(state) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached}


def _numpy_state_from_plain(plain: dict):
    keys = plain["keys"].numpy().astype(np.uint32)
    return (plain["name"], keys, plain["pos"], plain["has_gauss"], plain["cached"])


def _as_python_state(state):
    # weights_only loading turns the inner tuple into a list; random.setstate needs tuples.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
