"""Shared fixtures: compose the real Hydra config and shrink it for CPU tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lmms_engine.train.resolvers import register_resolvers

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = str(REPO / "conf")

# The text-only tiny model on the text demo data (the default is the tiny VL model on mixed data).
TEXT = ["model=tiny", "data=demo"]
# Small enough that a CPU test trains a few steps in seconds; text unless a test asks for VL.
SHRINK = [
    *TEXT,
    "trainer.max_steps=4",
    "trainer.save_every=0",
    "trainer.log_every=1",
    "optim.warmup_steps=0",
    "data.packing_length=512",
    "trainer.report=false",  # report.html costs ~0.5 s a run; tests/e2e/test_report_run.py covers it
]


def compose_config(*overrides: str, shrink: bool = True, vl: bool = False) -> DictConfig:
    """The composed train config; shrink: SHRINK first; vl: keep the default tiny VL model and data."""
    register_resolvers()
    base = [o for o in SHRINK if not (vl and o in TEXT)] if shrink else []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[*base, *overrides])


@pytest.fixture
def data_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("token_cache")
    monkeypatch.setenv("LMMS_ENGINE_CACHE", str(cache))
    return cache


