"""Data pipeline: sources -> chat messages -> tokens + label masks (+ images / video for
vision-language models) -> packed / padded batches.

The Hydra `_target_` is `lmms_engine.data.build_sft_dataset` (see docs/data_prep.md).
"""

from .collate import collate_packed, collate_padded
from .dataset import SFTDataset, build_sft_dataset
from .errors import DataError, DataSourceError, TemplateError
from .media import MediaSettings
from .types import MediaItem, Sample

__all__ = [
    "DataError",
    "DataSourceError",
    "MediaItem",
    "MediaSettings",
    "SFTDataset",
    "Sample",
    "TemplateError",
    "build_sft_dataset",
    "collate_packed",
    "collate_padded",
]
