"""Data pipeline: sources -> chat messages -> tokens + label masks (+ images / video for
vision-language models, audio for audio-language models) -> packed / padded batches.

The data config group's Hydra `_target_` is `lmms_engine.data.settings.DataSettings`, which the entry point
passes to `lmms_engine.data.build_sft_dataset` (see docs/data_prep.md).
"""

from .batch import Batch
from .collate import collate_packed, collate_padded
from .dataset import SFTDataset, build_sft_dataset
from .errors import DataError, DataSourceError, TemplateError
from .media import MediaSettings
from .media_audio import AudioSettings
from .modalities import MediaSupport
from .settings import DataSettings
from .steps import StepSource, TrainData
from .types import MediaItem, Sample

__all__ = [
    "AudioSettings",
    "Batch",
    "DataError",
    "DataSettings",
    "DataSourceError",
    "MediaItem",
    "MediaSettings",
    "MediaSupport",
    "SFTDataset",
    "Sample",
    "StepSource",
    "TemplateError",
    "TrainData",
    "build_sft_dataset",
    "collate_packed",
    "collate_padded",
]
