"""The built-in family entries (models/family.py) agree with what they name: their presets, their
registry lines, their Liger patches, their media rules, and the modules outside models/ name none
of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lmms_engine.kernels.liger import LIGER_REGISTRY
from lmms_engine.models import registry
from lmms_engine.models.family import AUDIO, VISION
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted((REPO / "conf" / "model").glob("*.yaml"))
# The issue-29 bar: no family class or builder path outside models/ and compat.py.
FAMILY_NAMES = re.compile(r"Qwen2_5_VL|Qwen3VL|Qwen2Audio|Qwen2VL|qwen2_5_vl|qwen3_vl|qwen2_audio")
FAMILY_FREE = ["lmms_engine/kernels", "lmms_engine/data", "lmms_engine/train", "lmms_engine/parallel",
               "lmms_engine/config_checks.py", "scripts"]


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_is_listed_by_its_family(preset):
    target = compose_config(f"model={preset.stem}", shrink=False).model._target_
    if target == "lmms_engine.models.registry.build_auto":
        return
    family = registry.family_of(target)
    assert family is not None, f"{preset.stem}: no family entry for {target}"
    assert preset.stem in family.presets


@pytest.mark.parametrize("family", registry.families(), ids=lambda f: f.name)
def test_each_entry_is_consistent(family):
    assert all(registry.FAMILIES[model_type] == family.builder for model_type in family.model_types)
    for preset in (*family.presets, *([family.bench_preset] if family.bench_preset else [])):
        assert (REPO / "conf" / "model" / f"{preset}.yaml").is_file(), preset
    if family.liger is not None:
        assert all(LIGER_REGISTRY[model_type] is family.liger for model_type in family.model_types)
    processor = family.builtin_processor({})
    assert (registry.media_rules(processor) is family.media) or family.media is None
    assert ("audio" in family.media_kinds) == bool(family.media and family.media.audio)


def test_defaults_per_media_kind():
    assert [registry.default_family(kinds).name for kinds in (frozenset(), VISION, AUDIO)] == \
        ["qwen2", "qwen2_5_vl", "qwen2_audio"]


def test_no_module_outside_models_names_a_family():
    hits = [f"{path.relative_to(REPO)}:{number}" for root in FAMILY_FREE for path in _python_files(REPO / root)
            for number, line in enumerate(path.read_text().splitlines(), 1) if FAMILY_NAMES.search(line)]
    assert hits == []


def _python_files(root: Path) -> list[Path]:
    return [root] if root.is_file() else sorted(root.rglob("*.py"))
