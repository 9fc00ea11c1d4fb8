"""Nested config mappings as dotted keys: what a Hydra override names (`optim.lora.rank`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten(node: Mapping, prefix: str = "") -> dict[str, Any]:
    """{a: {b: 1}} -> {"a.b": 1}; an empty mapping stays as a value ({})."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
