"""OpenAI chat records: `messages` as a list (or, in parquet / arrow, a JSON string), media parts
without a payload filled from the record's media columns in order."""

from __future__ import annotations

import json
from typing import Any

from ..errors import DataError, shorten
from .columns import MediaValue, RecordMedia

# part type -> media kind; a part's payload is under its `*_url` key or the alias key
PART_KINDS = {"image_url": "image", "image": "image", "video_url": "video", "video": "video",
              "audio_url": "audio", "audio": "audio"}


def openai_record(raw: dict, media: RecordMedia, tabular: bool, where: str) -> dict:
    messages = raw.get("messages")
    if isinstance(messages, str) and tabular:
        messages = parse_json_string(messages, "messages", where)
    if isinstance(messages, list) and media.items:
        messages = fill_media_parts(messages, media, where)
    return {"messages": messages}


def parse_json_string(text: str, key: str, where: str) -> Any:
    """`key`'s value stored as a JSON string; DataError `messages_not_json` if it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:  # also: nested too deeply, an over-long integer
        raise DataError(
            where, "messages_not_json", f"'{key}' is a string but not JSON ({error}): {shorten(text)}"
        ) from None


def fill_media_parts(messages: list, media: RecordMedia, where: str) -> list:
    """`messages` with every payload-less media part of a kind that has a column given that
    column's next item. The counts must agree, unless no part of the kind lacks a payload and some
    name theirs (then the messages name their media themselves and the column is not used)."""
    pending = {kind: list(values) for kind, values in media.items.items()}
    counts = {kind: [0, 0] for kind in pending}  # kind -> [payload-less parts, parts with a payload]
    filled = [_filled_message(m, pending, counts) for m in messages]
    for kind, (bare, named) in counts.items():
        if bare == 0 and named > 0:
            continue
        if bare != len(media.items[kind]):
            raise DataError(
                where,
                "media_count_mismatch",
                f"the messages have {bare} {kind} part(s) without a payload but the record's "
                f"'{media.columns[kind]}' holds {len(media.items[kind])} {kind}(s); they are matched in order",
            )
    return filled


def _filled_message(message: Any, pending: dict[str, list[MediaValue]], counts: dict[str, list[int]]) -> Any:
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message  # messages.parse_record reports what is wrong with it
    content = [_filled_part(part, pending, counts) for part in message["content"]]
    return {**message, "content": content}


def _filled_part(part: Any, pending: dict[str, list[MediaValue]], counts: dict[str, list[int]]) -> Any:
    kind = PART_KINDS.get(part.get("type")) if isinstance(part, dict) and isinstance(part.get("type"), str) else None
    if kind not in pending:
        return part
    if any(part.get(key) is not None for key in (f"{kind}_url", kind)):
        counts[kind][1] += 1
        return part
    counts[kind][0] += 1
    if not pending[kind]:
        return part  # counted: fill_media_parts reports the mismatch
    return {"type": f"{kind}_url", f"{kind}_url": pending[kind].pop(0)}
