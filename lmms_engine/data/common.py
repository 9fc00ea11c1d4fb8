"""What the indexed (dataset.py) and the streaming (streaming.py) SFT data share: the model-side
media inputs, the pad id, the overlong cut rule and the collation of one micro-batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from lmms_engine.models.mrope import MropeSpec

from .batch import Batch
from .chat import IGNORE_INDEX
from .collate import collate_packed, collate_padded, mrope_position_ids_packed, mrope_position_ids_padded
from .media_pixels import pixel_inputs
from .media_audio import audio_inputs
from .modalities import MediaOptions, MediaSupport, media_support
from .types import Sample


@dataclass(frozen=True)
class MediaInputs:
    """What a multimodal dataset needs beyond the tokenizer."""

    processor: object
    support: MediaSupport
    mrope_spec: MropeSpec | None  # None: 1-D position ids (audio-only models)


def media_inputs(
    processor, mrope_spec: MropeSpec | None, tokenizer: PreTrainedTokenizerBase, options: MediaOptions
) -> MediaInputs | None:
    """The processor's media settings, checked against the model's mrope ids (None: text only)."""
    if processor is None:
        return None
    support = media_support(processor, tokenizer, options)
    if support.vision is not None:
        check_mrope_spec(mrope_spec, support)
    return MediaInputs(processor=processor, support=support, mrope_spec=mrope_spec)


def check_mrope_spec(mrope_spec: MropeSpec | None, support: MediaSupport) -> None:
    if mrope_spec is None:
        raise ValueError(
            "a vision-language dataset (processor given) needs the model's mrope_spec for its 3-D position "
            "ids: MropeSpec.from_config(model.config)"
        )
    settings = support.vision
    model_side = (mrope_spec.image_token_id, mrope_spec.video_token_id, mrope_spec.spatial_merge_size)
    data_side = (settings.image_token_id, settings.video_token_id, settings.merge_size)
    if model_side != data_side:
        raise ValueError(
            f"mrope_spec (image, video token ids, merge size) = {model_side} but the tokenizer and processor "
            f"give {data_side}; the processor does not belong to the model"
        )


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    # Pads are masked out (attention 0, label -100), so any valid id works; prefer the real pad.
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ValueError("the tokenizer has neither a pad_token nor an eos_token; set tokenizer.pad_token")


def placeholder_id_list(media: MediaSupport | None) -> list[int]:
    """The token ids that stand for media items (none for text data)."""
    return list(media.placeholder_ids().values()) if media is not None else []


def cut_flags(input_ids: np.ndarray, labels: np.ndarray, max_length: int, placeholder_ids: list[int]) -> tuple[bool, bool]:
    """For a sample longer than max_length: (has a trained label in its first max_length tokens,
    may be cut at max_length). Shifted labels never use position 0, so a cut sample is trained iff
    labels[1:max_length] are; a cut may not split or drop a media item: every placeholder must stay
    before it."""
    trained = bool((labels[1:max_length] != IGNORE_INDEX).any())
    placeholders = np.flatnonzero(np.isin(input_ids, placeholder_ids)) if placeholder_ids else []
    cuttable = len(placeholders) == 0 or placeholders[-1] < max_length
    return trained, bool(cuttable)


def collate_samples(samples: list[Sample], packing: bool, pad_token_id: int, media: MediaInputs | None) -> Batch:
    """Model inputs of one micro-batch: packed or padded tokens, plus mrope position ids, pixels
    and audio features when the data is multimodal."""
    batch = collate_packed(samples) if packing else collate_padded(samples, pad_token_id)
    if media is None:
        return batch
    spec, support = media.mrope_spec, media.support
    extra = {}
    if spec is not None:  # else the 1-D position ids stay (audio models: plain RoPE)
        extra["position_ids"] = (mrope_position_ids_packed if packing else mrope_position_ids_padded)(samples, spec)
    items = [item for sample in samples for item in sample.media]
    if support.vision is not None:
        extra.update(pixel_inputs(items, media.processor, support.vision))
    if support.audio is not None:
        extra.update(audio_inputs(items, media.processor, support.audio))
    return batch.with_fields(**extra)
