"""Shared fixtures: compose the real Hydra config and shrink it for CPU tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lmms_engine.train.resolvers import register_resolvers

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = str(REPO / "conf")

# Small enough that a CPU test trains a few steps in seconds.
SHRINK = [
    "trainer.max_steps=4",
    "trainer.save_every=0",
    "trainer.log_every=1",
    "optim.warmup_steps=0",
    "data.packing_length=512",
]


def compose_config(*overrides: str, shrink: bool = True) -> DictConfig:
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[*(SHRINK if shrink else []), *overrides])


@pytest.fixture
def data_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("token_cache")
    monkeypatch.setenv("LMMS_ENGINE_CACHE", str(cache))
    return cache


