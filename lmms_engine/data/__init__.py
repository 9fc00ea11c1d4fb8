"""Data pipeline: sources -> chat messages -> tokens + label masks -> packed / padded batches.

The Hydra `_target_` is `lmms_engine.data.build_sft_dataset` (see docs/data_prep.md).
"""

from .collate import collate_packed, collate_padded
from .dataset import SFTDataset, build_sft_dataset
from .errors import DataError, DataSourceError, TemplateError
from .types import Sample

__all__ = [
    "DataError",
    "DataSourceError",
    "SFTDataset",
    "Sample",
    "TemplateError",
    "build_sft_dataset",
    "collate_packed",
    "collate_padded",
]
