"""Data pipeline: sources -> chat messages -> tokens + label masks (+ images / video for
vision-language models, audio for audio-language models) -> packed / padded batches.

The data config group's Hydra `_target_` is `lmms_engine.data.settings.DataSettings`, which the entry point
passes to `lmms_engine.data.build_sft_dataset` (see docs/data_prep.md).

The names below are imported on first use (PEP 562): importing a light submodule (sources, errors)
does not pull in torch and transformers, so the entry point can check data paths before those imports.
"""

from __future__ import annotations

import importlib

# name -> the submodule that defines it
_EXPORTS = {
    "AudioSettings": "media_audio", "Batch": "batch", "DataError": "errors", "DataSettings": "settings",
    "DataSourceError": "errors",
    "MediaItem": "types", "MediaSettings": "media", "MediaSupport": "modalities", "SFTDataset": "dataset",
    "Sample": "types", "StepSource": "steps", "TemplateError": "errors", "TrainData": "steps",
    "build_sft_dataset": "dataset", "collate_packed": "collate", "collate_padded": "collate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
