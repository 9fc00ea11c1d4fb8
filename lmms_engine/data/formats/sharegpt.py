"""LLaVA / ShareGPT records: `conversations: [{"from", "value"}]`, with `<image>` / `<video>` /
`<audio>` placeholders in the text matched in order to the record's media columns.

The text around a placeholder is kept as it is (LLaVA's `"<image>\\nWhat is this?"` becomes an
image part and the text part `"\\nWhat is this?"`), so the conversation the model sees is the
one written. A top-level `system` string (LLaMA-Factory's variant) becomes the system turn.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import DataError, shorten
from .columns import RecordMedia
from .openai import fill_media_parts, parse_json_string

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
PLACEHOLDERS = {"<image>": "image", "<video>": "video", "<audio>": "audio"}
_PLACEHOLDER = re.compile("(" + "|".join(re.escape(p) for p in PLACEHOLDERS) + ")")


def sharegpt_record(raw: dict, media: RecordMedia, tabular: bool, where: str) -> dict:
    turns = raw.get("conversations")
    if isinstance(turns, str) and tabular:
        turns = parse_json_string(turns, "conversations", where)
    if not isinstance(turns, list):
        raise DataError(
            where, "bad_messages", f"'conversations' must be a list of {{from, value}} turns, got {type(turns).__name__}"
        )
    messages = [_message(turn, i, where) for i, turn in enumerate(turns)]
    system = raw.get("system")
    if isinstance(system, str) and system and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    found = {kind for m in messages if isinstance(m["content"], list) for kind in _kinds(m["content"])}
    for kind in found - set(media.items):
        count = sum(_kinds(m["content"]).count(kind) for m in messages if isinstance(m["content"], list))
        raise DataError(
            where, "media_count_mismatch",
            f"the conversation has {count} <{kind}> placeholder(s) but the record has no '{kind}' media",
        )
    return {"messages": fill_media_parts(messages, media, where)}


def _message(turn: Any, i: int, where: str) -> dict:
    if not isinstance(turn, dict):
        raise DataError(where, "bad_message", f"conversations[{i}] must be an object, got {type(turn).__name__}")
    speaker = turn.get("from")
    role = ROLES.get(speaker) if isinstance(speaker, str) else None
    if role is None:
        raise DataError(
            where,
            "unknown_role",
            f"conversations[{i}] has unknown 'from' {shorten(speaker)} (expected one of human, gpt, system; "
            "user and assistant are accepted too)",
        )
    value = turn.get("value")
    if not isinstance(value, str):
        raise DataError(
            where, "bad_content", f"conversations[{i}] ({speaker}) 'value' must be a string, got {type(value).__name__}"
        )
    pieces = _PLACEHOLDER.split(value)
    if len(pieces) == 1:
        return {"role": role, "content": value}
    parts = [
        {"type": PLACEHOLDERS[p]} if p in PLACEHOLDERS else {"type": "text", "text": p} for p in pieces if p
    ]
    return {"role": role, "content": parts}


def _kinds(parts: list[dict]) -> list[str]:
    return [p["type"] for p in parts if p["type"] != "text"]
