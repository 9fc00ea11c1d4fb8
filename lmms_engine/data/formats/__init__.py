"""Record formats: each raw record becomes the internal OpenAI-messages form here, before
validation (messages.py), so the rest of the pipeline is the same for every format.

  * `openai`: `{"messages": [{"role", "content"}]}`, as documented in docs/data_prep.md §1. In a
    parquet / arrow source `messages` may also be a JSON string (Arrow cannot hold a column whose
    content is sometimes a string and sometimes a list of parts, so many published sets serialise
    it). Media parts without a payload (`{"type": "image"}`) take the record's media column
    (`images` / `image`, `videos` / `video`, `audios` / `audio`) in order: the layout of the
    multimodal SFT sets on the Hugging Face hub, whose images are embedded `Image` features.
  * `sharegpt` (LLaVA): `{"conversations": [{"from": "human" | "gpt" | "system", "value": ...}]}`
    with `<image>` / `<video>` / `<audio>` placeholders matched in order to the record's `image`,
    `video`, `audio` columns (a path or a list; embedded structs work too).

`data_format: auto` (the default) detects the format per record: `messages` is OpenAI, else
`conversations` is ShareGPT. A dataset yaml entry may force one (`data_format: sharegpt`).
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError
from ..sources import SourceFile
from .columns import record_media
from .openai import openai_record
from .sharegpt import sharegpt_record

EMBEDDABLE_TYPES = ("parquet", "arrow")  # sources whose records can hold bytes (and JSON strings)


def to_openai(raw: Any, source: SourceFile, location: int, where: str) -> tuple[Any, str | None]:
    """`raw` in the OpenAI-messages form and the format detected (None for a record that is not an
    object: messages.parse_record names that problem). Raises DataError on a bad record."""
    if not isinstance(raw, dict):
        return raw, None
    data_format = _detect(raw, source.data_format, where)
    tabular = source.data_type in EMBEDDABLE_TYPES
    media = record_media(raw, str(source.path.absolute()), location, tabular, where)
    if data_format == "sharegpt":
        return sharegpt_record(raw, media, tabular, where), "sharegpt"
    label = "openai-json-string" if isinstance(raw.get("messages"), str) and tabular else "openai"
    return openai_record(raw, media, tabular, where), label


def _detect(raw: dict, data_format: str, where: str) -> str:
    if data_format != "auto":
        return data_format
    if raw.get("messages") is None and raw.get("conversations") is not None:
        return "sharegpt"
    if raw.get("messages") is None:
        raise DataError(
            where,
            "no_messages",
            "record has no 'messages' key (OpenAI chat) and no 'conversations' key (LLaVA / ShareGPT)",
        )
    return "openai"
