"""Validation of one raw record (OpenAI chat messages) into a `Record`.

A record is `{"messages": [{"role": ..., "content": ...}, ...]}`. `content` is a string or a list
of parts: `{"type": "text", "text": ...}`, `{"type": "image_url", "image_url": "x.jpg" | {"url":
"x.jpg"}}` and the same for `video_url` / `audio_url`. The aliases `image`, `video`, `audio` are
accepted as type (their payload under the alias key or the `*_url` key). Keys whose value is None
are ignored: arrow / parquet tables store every struct field on every row, unused ones as null.
A media payload may also be an `EmbeddedMedia` (bytes of a parquet / arrow row), which only the
format adapters (formats/) put there: no JSON value can be one.
"""

from __future__ import annotations

from typing import Any

from .errors import DataError, shorten
from .media_source import EmbeddedMedia
from .types import MEDIA_TYPES, ROLES, ContentPart, Message, Provenance, Record

PART_TYPE_ALIASES = {"image": "image_url", "video": "video_url", "audio": "audio_url"}


def parse_record(raw: Any, provenance: Provenance) -> Record:
    """Validate a decoded record; raise DataError naming the record and the problem."""
    where = provenance.where
    if not isinstance(raw, dict):
        raise DataError(where, "not_a_dict", f"record must be a JSON object, got {type(raw).__name__}")
    if raw.get("messages") is None:
        raise DataError(where, "no_messages", "record has no 'messages' key")
    raw_messages = raw["messages"]
    if not isinstance(raw_messages, list):
        raise DataError(
            where, "bad_messages", f"'messages' must be a list, got {type(raw_messages).__name__}"
        )
    if not raw_messages:
        raise DataError(where, "empty_conversation", "'messages' is an empty list")
    messages = tuple(_parse_message(m, i, where) for i, m in enumerate(raw_messages))
    if messages[0].role == "assistant":
        # Its prompt would be an empty conversation, which chat templates cannot render.
        raise DataError(
            where, "assistant_first", "messages[0] is an assistant turn; start with a system or user turn"
        )
    for i, message in enumerate(messages):
        if message.role == "assistant" and message.has_media:
            # Its placeholders would be masked but the vision / audio start and end tokens trained.
            raise DataError(
                where, "media_in_assistant", f"messages[{i}] is an assistant turn with a media part; images, "
                "video and audio go in system or user turns (the model reads media, it does not generate it)"
            )
    if not any(m.role == "assistant" and _is_non_empty(m) for m in messages):
        raise DataError(where, "no_assistant", "conversation has no assistant turn with non-empty content")
    return Record(messages=messages, provenance=provenance)


def _is_non_empty(message: Message) -> bool:
    if isinstance(message.content, str):
        return bool(message.content)
    return any(p.value for p in message.content)


def _parse_message(raw: Any, i: int, where: str) -> Message:
    if not isinstance(raw, dict):
        raise DataError(where, "bad_message", f"messages[{i}] must be an object, got {type(raw).__name__}")
    role = raw.get("role")
    if role not in ROLES:
        raise DataError(
            where,
            "unknown_role",
            f"messages[{i}] has unknown role {shorten(role)} (expected one of {', '.join(ROLES)})",
        )
    content = raw.get("content")
    if isinstance(content, str):
        return Message(role=role, content=_encodable(content, f"messages[{i}] ({role}) 'content'", where))
    if isinstance(content, list):
        parts = tuple(_parse_part(p, i, j, where) for j, p in enumerate(content))
        return Message(role=role, content=parts)
    raise DataError(
        where,
        "bad_content",
        f"messages[{i}] ({role}) 'content' must be a string or a list of parts, got {type(content).__name__}",
    )


def _parse_part(raw: Any, i: int, j: int, where: str) -> ContentPart:
    at = f"messages[{i}].content[{j}]"
    if not isinstance(raw, dict):
        raise DataError(where, "bad_part", f"{at} must be an object, got {type(raw).__name__}")
    kind = raw.get("type")
    if kind == "text":
        text = raw.get("text")
        if not isinstance(text, str):
            raise DataError(where, "bad_part", f"{at} of type 'text' needs a string 'text'")
        return ContentPart(type="text", value=_encodable(text, f"{at} 'text'", where))
    # A non-string type (a list or dict in the JSON) is unhashable: no dict lookup with it.
    canonical = PART_TYPE_ALIASES.get(kind, kind) if isinstance(kind, str) else None
    if canonical not in MEDIA_TYPES:
        allowed = ", ".join(("text", *MEDIA_TYPES, *PART_TYPE_ALIASES))
        raise DataError(
            where, "bad_part", f"{at} has unknown type {shorten(kind)} (expected one of {allowed})"
        )
    return ContentPart(type=canonical, value=_media_url(raw, kind, canonical, at, where))


def _media_url(raw: dict, kind: str, canonical: str, at: str, where: str) -> str | EmbeddedMedia:
    """The url of a media part: under the `*_url` key or the alias key, as a str or {"url": str}
    (or the embedded item a format adapter put there)."""
    payload = raw.get(canonical)
    if payload is None:
        payload = raw.get(kind)
    if isinstance(payload, EmbeddedMedia):
        return payload
    if isinstance(payload, dict):
        payload = payload.get("url")
    if not isinstance(payload, str) or not payload:
        raise DataError(
            where,
            "bad_part",
            f"{at} of type {kind!r} needs '{canonical}' as a non-empty string or {{\"url\": string}} (or, "
            f"without a payload, a media column such as 'images' in the record to take it from)",
        )
    return payload


def _encodable(text: str, what: str, where: str) -> str:
    """`text`, if it has a UTF-8 form. A JSON escape of a lone surrogate (`"\\ud800"`, half of a
    pair) decodes to a str that has none, and the tokenizer refuses it (a TypeError that would
    stop the whole chunk), so it is an error of its record."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DataError(
            where,
            "not_utf8",
            f"{what} holds the lone surrogate {text[error.start]!r} at character {error.start} "
            "(a \\uXXXX escape that is half of a pair), which is not valid Unicode",
        ) from None
    return text
