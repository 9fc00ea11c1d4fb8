"""Bad data at scale: property-based fuzzing of the data loader (issue 7).

Hypothesis writes jsonl files that mix valid conversations with malformed records (wrong types,
missing keys, unknown roles, empty conversations, no assistant turn, huge and empty strings, lone
surrogates, special tokens in text, invalid UTF-8, non-JSON lines, JSON nested too deep, broken,
missing, escaping and remote media) and blank lines. The real loader reads each file with the
byte-level text tokenizer, the built-in Qwen2.5-VL processor and the built-in Qwen2-Audio
processor. What must happen to every line is decided by `expected_outcome`, a restatement of the
documented record format (docs/data_prep.md §1 and §3), not by the loader:

  * on_error=skip: a bad line is skipped and counted under its reason (`skipped_by_reason` equals
    the expected counts exactly); a valid line is one sample whose trained labels are exactly its
    assistant turns' tokens (content + <|im_end|>), and a valid line longer than packing_length is
    dropped and counted in `dropped_overlong`; nothing of a bad line reaches the dataset;
  * on_error=raise: a DataError naming `file:line` of the first bad line, with its reason;
  * `lmms-data check` (check.py): every bad line printed as `file:line: [reason]`.

Any other exception fails the test. Media files are made once per module (`media_files`); each
media part value the fuzz uses has a known fate per kind (`media_table`).
"""

from __future__ import annotations

import io
import json
import re
import tempfile
import wave
from collections import Counter
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from lmms_engine.data import prepare
from lmms_engine.data.chat import IGNORE_INDEX
from lmms_engine.data.check import main
from lmms_engine.data.dataset import build_sft_dataset
from lmms_engine.data.settings import DataSettings
from lmms_engine.data.errors import DataError
from lmms_engine.data.types import ROLES
from lmms_engine.models.mrope import MropeSpec
from lmms_engine.models.qwen2_5_vl import build_builtin_processor
from lmms_engine.models.qwen2_audio import build_builtin_audio_processor
from lmms_engine.models.tokenizer import build_byte_tokenizer

PACKING_LENGTH = 2048
HUGE_CHARS = 4 * PACKING_LENGTH  # a "huge" text: a valid record this long is dropped as overlong
END = "<|im_end|>"
MEDIA_KINDS = ("image", "video", "audio")
PART_TYPES = ("text", "image_url", "video_url", "audio_url", "image", "video", "audio")
# Hypothesis: small example counts (the whole file runs in well under a minute on 2 cores); no
# example database written into the repository.
FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# ---------------------------------------------------------------- the three loaders


@dataclass(frozen=True)
class Mode:
    """One way of loading: a tokenizer, the processor / mrope spec build_sft_dataset gets, the media
    kinds it takes and the placeholder tokens a text part must not spell."""

    name: str
    tokenizer: Any
    inputs: dict
    kinds: tuple[str, ...]
    placeholders: tuple[str, ...]
    check_args: tuple[str, ...]  # `lmms-data check` options that load the same way

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids


@pytest.fixture(scope="module")
def modes() -> dict[str, Mode]:
    vl = build_builtin_processor()
    convert = vl.tokenizer.convert_tokens_to_ids
    spec = MropeSpec(
        image_token_id=convert("<|image_pad|>"),
        video_token_id=convert("<|video_pad|>"),
        spatial_merge_size=2,
        tokens_per_second=2,
    )
    audio = build_builtin_audio_processor()
    return {
        "text": Mode("text", build_byte_tokenizer(), {}, (), (), ("--model", "tiny")),
        "vl": Mode(  # check's default: the built-in VL processor
            "vl",
            vl.tokenizer,
            {"processor": vl, "mrope_spec": spec},
            ("image", "video"),
            ("<|image_pad|>", "<|video_pad|>"),
            (),
        ),
        "audio": Mode(
            "audio",
            audio.tokenizer,
            {"processor": audio},
            ("audio",),
            ("<|AUDIO|>",),
            ("--model", "tiny_qwen2_audio"),
        ),
    }


# ---------------------------------------------------------------- media files and their fates


def write_wav(path: Path, seconds: float, rate: int = 16000) -> None:
    t = np.arange(round(seconds * rate)) / rate
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(np.round(0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16).tobytes())


def write_video(path: Path, frames: int = 8, fps: int = 8, width: int = 64, height: int = 48) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            frame = np.full((height, width, 3), 30 * t % 255, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_png(path: Path, width: int, height: int) -> None:
    pixels = np.random.default_rng(width * height).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def media_files(tmp_path_factory) -> Path:
    """root/media (the data_folder): good, tiny, extreme, garbage, truncated and empty files of each
    kind, and a folder; root/outside.* (valid files outside the data_folder)."""
    root = tmp_path_factory.mktemp("fuzz_media")
    media = root / "media"
    (media / "sub").mkdir(parents=True)
    write_png(media / "ok.png", 64, 48)
    write_png(media / "tiny.png", 10, 10)
    write_png(media / "thin.png", 300, 1)  # aspect ratio over 200
    write_png(root / "outside.png", 40, 40)
    with Image.open(media / "ok.png") as rgb:  # valid images in other pixel modes
        for mode in ("L", "RGBA", "P", "1", "CMYK"):
            rgb.convert(mode).save(media / f"mode_{mode}.{'jpg' if mode == 'CMYK' else 'png'}")
    Image.fromarray(np.full((30, 40), 1000, np.uint16)).save(media / "mode_I16.png")
    write_video(media / "clip.mp4")
    write_video(root / "outside.mp4", frames=4)
    write_wav(media / "ok.wav", 0.5)
    write_wav(media / "short.wav", 0.001)  # 16 samples: too short for one audio token
    write_wav(media / "silent.wav", 0.0)  # a header and no samples
    write_wav(root / "outside.wav", 0.25)
    garbage = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    for name, good in (("png", "ok.png"), ("mp4", "clip.mp4"), ("wav", "ok.wav")):
        (media / f"garbage.{name}").write_bytes(garbage)
        (media / f"empty.{name}").write_bytes(b"")
        data = (media / good).read_bytes()
        # Cut inside the image data / before the mp4 index / inside the wav header.
        (media / f"trunc.{name}").write_bytes(
            data[: {"png": len(data) // 2, "mp4": len(data) // 2, "wav": 30}[name]]
        )
    return root


EXTENSIONS = {"image": "png", "video": "mp4", "audio": "wav"}
PIXEL_MODE_FILES = (
    "mode_L.png",
    "mode_RGBA.png",
    "mode_P.png",
    "mode_I16.png",
    "mode_1.png",
    "mode_CMYK.jpg",
)
REMOTE = (
    "http://example.com/a.png",
    "https://example.com/a.png",
    "s3://bucket/a.png",
    "ftp://host/a.png",
    "data:image/png;base64,iVBORw0KGgo=",
    "http://[::1/a.png",  # an unclosed IPv6 host: urlparse raises
    "file://otherhost/a.png",
    "file:ok.png",  # a file URL needs an absolute path
    "file:../outside.png",
)


def media_table(root: Path) -> dict[str, dict[str, str | None]]:
    """kind -> part value -> the reason its record is refused for (None: a valid file of that kind)."""
    media = root / "media"
    table = {}
    for kind, ext in EXTENSIONS.items():
        good = {"image": "ok.png", "video": "clip.mp4", "audio": "ok.wav"}[kind]
        fates: dict[str, str | None] = {
            good: None,
            f"./{good}": None,
            f"sub/../{good}": None,  # `..` that stays inside the data_folder
            f"../media/{good}": None,
            str(root / f"outside.{ext}"): None,  # absolute paths may point anywhere
            (media / good).as_uri(): None,
            "file://localhost" + str(media / good): None,
            f"missing.{ext}": "media_missing",
            "sub": "media_missing",  # a folder
            "x" * 300 + f".{ext}": "media_missing",  # a name too long for the file system
            f"a\x00b.{ext}": "media_missing",
            f"\ud800.{ext}": "media_missing",  # a lone surrogate (only via a \\u escape)
            str(media / f"missing.{ext}"): "media_missing",
            f"../outside.{ext}": "media_path_escape",
            "../../../../../../etc/passwd": "media_path_escape",
            f"sub/../../outside.{ext}": "media_path_escape",
            **{url: "media_url_unsupported" for url in REMOTE},
            **{f"{bad}.{ext}": "media_unreadable" for bad in ("garbage", "empty", "trunc")},
        }
        table[kind] = fates
    table["image"].update(
        {
            "tiny.png": None,
            **{name: None for name in PIXEL_MODE_FILES},
            "thin.png": "media_unreadable",
            "ok.wav": "media_unreadable",
            "clip.mp4": "media_unreadable",
        }
    )
    # PyAV reads an image as a one-frame video: valid (the frame is repeated up to video_min_frames).
    table["video"].update({"ok.png": None, "tiny.png": None, "ok.wav": "media_unreadable"})
    table["audio"].update(
        {
            "short.wav": "media_unreadable",
            "silent.wav": "media_unreadable",
            "ok.png": "media_unreadable",  # no audio stream
            "clip.mp4": "media_unreadable",
        }
    )
    return table


# ---------------------------------------------------------------- the oracle (docs/data_prep.md)


@dataclass(frozen=True)
class Outcome:
    """A line's fate: blank (not a record), bad (refused for `reason`), or valid (the decoded
    `record`, from which its tokens and trained labels follow)."""

    blank: bool = False
    reason: str | None = None
    record: Any = None

    @property
    def bad(self) -> bool:
        return self.reason is not None


def expected_outcome(line: bytes, mode: Mode, table: dict) -> Outcome:
    if not line.strip():
        return Outcome(blank=True)
    try:
        raw = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return Outcome(reason="not_utf8")
    except (ValueError, RecursionError):
        return Outcome(reason="malformed_json")
    reason = record_problem(raw, mode, table)
    return Outcome(reason=reason) if reason else Outcome(record=raw)


def record_problem(raw: Any, mode: Mode, table: dict) -> str | None:
    """The documented reason a decoded record is refused, checked in the documented order."""
    if not isinstance(raw, dict):
        return "not_a_dict"
    messages = raw.get("messages")
    if messages is None:
        return "no_messages"
    if not isinstance(messages, list):
        return "bad_messages"
    if not messages:
        return "empty_conversation"
    for message in messages:
        problem = message_problem(message)
        if problem:
            return problem
    if messages[0]["role"] == "assistant":
        return "assistant_first"
    if not any(m["role"] == "assistant" and non_empty(m["content"]) for m in messages):
        return "no_assistant"
    media = [(media_kind(p), media_value(p)) for m in messages for p in parts(m) if media_kind(p)]
    if media and not mode.kinds:
        return "media_on_text_model"
    if any(kind not in mode.kinds for kind, _ in media):
        return "media_unsupported"
    for kind, value in media:
        assert value in table[kind], f"the fuzz made a media value with no known fate: {value!r}"
        if table[kind][value]:
            return table[kind][value]
    if any(p in text for m in messages for text in texts(m) for p in mode.placeholders):
        return "placeholder_mismatch"
    return None


def message_problem(message: Any) -> str | None:
    if not isinstance(message, dict):
        return "bad_message"
    if message.get("role") not in ROLES:
        return "unknown_role"
    content = message.get("content")
    if isinstance(content, str):
        return None if encodable(content) else "not_utf8"
    if not isinstance(content, list):
        return "bad_content"
    for part in content:
        problem = part_problem(part)
        if problem:
            return problem
    return None


def part_problem(part: Any) -> str | None:
    if not isinstance(part, dict):
        return "bad_part"
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            return "bad_part"
        return None if encodable(text) else "not_utf8"
    if not isinstance(kind, str) or kind not in PART_TYPES:
        return "bad_part"
    value = media_value(part)
    return None if isinstance(value, str) and value else "bad_part"


def media_kind(part: dict) -> str | None:
    kind = part["type"]
    return None if kind == "text" else kind.removesuffix("_url")


def media_value(part: dict) -> Any:
    """The url of a media part: under `<kind>_url`, or (alias types only) under the alias key; a
    str or {"url": str}."""
    kind = part["type"]
    alias = kind.removesuffix("_url")
    payload = part.get(f"{alias}_url")
    if payload is None and kind == alias:
        payload = part.get(alias)
    return payload.get("url") if isinstance(payload, dict) else payload


def parts(message: dict) -> list[dict]:
    return [] if isinstance(message["content"], str) else message["content"]


def texts(message: dict) -> list[str]:
    content = message["content"]
    return [content] if isinstance(content, str) else [p["text"] for p in content if p["type"] == "text"]


def non_empty(content: str | list[dict]) -> bool:
    if isinstance(content, str):
        return bool(content)
    return any(p["text"] if p["type"] == "text" else media_value(p) for p in content)


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# How the built-in templates write a media part: one placeholder token, expanded after tokenizing.
PART_TEXT = {
    "image": "<|vision_start|><|image_pad|><|vision_end|>",
    "video": "<|vision_start|><|video_pad|><|vision_end|>",
    "audio": "<|audio_bos|><|AUDIO|><|audio_eos|>",
}


def rendered(record: dict) -> str:
    """The conversation as the built-in ChatML templates write it (for a media model: one
    placeholder per media part)."""
    return "".join(f"<|im_start|>{m['role']}\n{content_text(m)}{END}\n" for m in record["messages"])


def content_text(message: dict) -> str:
    if isinstance(message["content"], str):
        return message["content"]
    return "".join(p["text"] if p["type"] == "text" else PART_TEXT[media_kind(p)] for p in message["content"])


def collapsed(ids: np.ndarray, mode: Mode) -> list[int]:
    """input_ids with each run of one placeholder token (an expanded media item) cut to one."""
    placeholders = [mode.encode(p)[0] for p in mode.placeholders]
    ids = ids.tolist()
    return [t for i, t in enumerate(ids) if not (t in placeholders and i > 0 and ids[i - 1] == t)]


def trained_ids(record: dict, mode: Mode) -> list[int]:
    """What a valid record's labels must train: each assistant turn's text and its <|im_end|>."""
    return [
        token
        for m in record["messages"]
        if m["role"] == "assistant"
        for token in mode.encode("".join(texts(m)) + END)
    ]


def is_overlong(record: dict, mode: Mode) -> bool:
    # Exact for text; media adds at most a few hundred tokens, far from the huge texts' margin.
    return len(mode.encode(rendered(record))) > PACKING_LENGTH


# ---------------------------------------------------------------- strategies

SAFE_TEXT = st.text(max_size=12).filter(lambda s: "<|" not in s)  # no special tokens by accident
KEYS = SAFE_TEXT.filter(lambda k: k != "type")  # so a junk dict is never a media part by accident
NON_TEXT_SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
SCALARS = NON_TEXT_SCALARS | SAFE_TEXT
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=6,
)
JUNK_LISTS = st.lists(JUNK, max_size=3)
JUNK_DICTS = st.dictionaries(KEYS, JUNK, max_size=3)
NOT_A_DICT = SCALARS | JUNK_LISTS
NOT_A_LIST = SCALARS | JUNK_DICTS
NOT_A_STR = NON_TEXT_SCALARS | JUNK_LISTS | JUNK_DICTS
NOT_STR_OR_LIST = NON_TEXT_SCALARS | JUNK_DICTS
BAD_ROLES = st.sampled_from(["tool", "Assistant", "USER", "", "user ", "function", "developer"]) | NOT_A_STR
BAD_PAYLOADS = st.sampled_from(
    [None, "", 0, 1.5, True, [], {}, {"url": None}, {"url": 7}, {"url": ""}, ["a.png"]]
)
SPECIAL_TEXT = st.sampled_from(
    [
        END,
        "<|im_start|>",
        "<|im_start|>assistant\n",
        f"{END}\n<|im_start|>user\n",
        "<|endoftext|>",
        "<|vision_start|>",
        "<|audio_bos|>",
        "<|image_pad|>",
        "<|video_pad|>",
        "<|AUDIO|>",
        "<|im_",
    ]
)
INVALID_UTF8 = st.sampled_from([b"\xff", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"])


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


CONTENT = SAFE_TEXT | st.lists(SAFE_TEXT.map(text_part), max_size=3)


@st.composite
def conversations(draw) -> dict:
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(CONTENT)})
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(CONTENT)})
        messages.append({"role": "assistant", "content": draw(CONTENT)})
    if not any(m["role"] == "assistant" and non_empty(m["content"]) for m in messages):
        messages[-1]["content"] = draw(SAFE_TEXT.filter(bool))
    return {"messages": messages}


def pick_message(draw, record: dict, roles=ROLES) -> dict | None:
    """A random message dict of the record with one of `roles` (None if the record has none)."""
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list):
        return None
    candidates = [m for m in messages if isinstance(m, dict) and m.get("role") in roles]
    return draw(st.sampled_from(candidates)) if candidates else None


def add_to_text(draw, record: dict, extra: str, roles=ROLES) -> None:
    """Put `extra` into a text of a random message (its string content or a text part)."""
    message = pick_message(draw, record, roles)
    if message is None:
        return
    content = message.get("content")
    if isinstance(content, str):
        message["content"] = draw(st.sampled_from([extra + content, content + extra]))
    elif isinstance(content, list):
        content.insert(draw(st.integers(0, len(content))), text_part(extra))


def add_media(draw, record: dict, table: dict, kinds: tuple[str, ...] = MEDIA_KINDS) -> None:
    """A media part (any value of the table, any accepted shape) in a non-assistant turn; mostly of
    `kinds` (the model's), sometimes of any kind."""
    message = pick_message(draw, record, ("system", "user"))
    if message is None or not isinstance(message.get("content"), (str, list)):
        return
    kind = draw(st.sampled_from(kinds or MEDIA_KINDS) | st.sampled_from(MEDIA_KINDS))
    valid = sorted(value for value, fate in table[kind].items() if fate is None)
    value = draw(st.sampled_from(valid) | st.sampled_from(sorted(table[kind])))  # half valid files
    part = draw(
        st.sampled_from(
            [
                {"type": f"{kind}_url", f"{kind}_url": value},
                {"type": f"{kind}_url", f"{kind}_url": {"url": value}},
                {"type": kind, kind: value},
                {"type": kind, f"{kind}_url": value, kind: None},
                {"type": f"{kind}_url", f"{kind}_url": None, kind: {"url": value}},
            ]
        )
    )
    content = message["content"]
    if isinstance(content, str):
        content = [text_part(content)]
    content.insert(draw(st.integers(0, len(content))), part)
    message["content"] = content


def mutate(draw, record: Any, name: str, table: dict, kinds: tuple[str, ...]) -> Any:
    """Apply one named defect (or harmless oddity) to a record; the oracle decides what it means."""
    messages = record.get("messages") if isinstance(record, dict) else None
    has_list = isinstance(messages, list)
    index = draw(st.integers(0, max(0, len(messages) - 1))) if has_list and messages else None
    target = messages[index] if index is not None and isinstance(messages[index], dict) else None
    if name == "not_a_dict":
        return draw(NOT_A_DICT)
    if name == "messages_junk" and isinstance(record, dict):
        record["messages"] = draw(NOT_A_LIST)
    elif name == "drop_messages" and isinstance(record, dict):
        record.pop("messages", None)
        # not "conversations": that key is a LLaVA / ShareGPT record (tests/unit/test_data_formats.py)
        record.update(draw(st.dictionaries(st.sampled_from(["conversation", "Messages", "text"]), JUNK)))
    elif name == "empty_messages" and isinstance(record, dict):
        record["messages"] = []
    elif name == "message_junk" and has_list:
        messages.insert(draw(st.integers(0, len(messages))), draw(NOT_A_DICT))
    elif name == "role" and target is not None:
        if draw(st.booleans()):
            target["role"] = draw(BAD_ROLES)
        else:
            target.pop("role", None)
    elif name == "content" and target is not None:
        if draw(st.booleans()):
            target["content"] = draw(NOT_STR_OR_LIST)
        else:
            target.pop("content", None)
    elif name == "bad_part" and target is not None and isinstance(target.get("content"), (str, list)):
        content = target["content"]
        content = [text_part(content)] if isinstance(content, str) else content
        part = draw(
            NOT_A_DICT
            | JUNK_DICTS  # no "type"
            | st.fixed_dictionaries(
                {"type": NOT_A_STR | st.sampled_from(["", "Text", "input_audio", "image_urls"])}
            )
            | st.fixed_dictionaries({"type": st.just("text"), "text": NOT_A_STR})
            | st.builds(
                lambda kind, payload: {"type": kind, kind: payload},
                st.sampled_from(PART_TYPES[1:]),
                BAD_PAYLOADS,
            )
        )
        content.insert(draw(st.integers(0, len(content))), part)
        target["content"] = content
    elif name == "no_assistant" and has_list:
        empty = draw(st.sampled_from(["", [], [text_part("")], None]))
        if empty is None:
            messages[:] = [m for m in messages if not (isinstance(m, dict) and m.get("role") == "assistant")]
        for m in messages:
            if isinstance(m, dict) and m.get("role") == "assistant":
                m["content"] = empty
    elif name == "assistant_first" and has_list:
        messages.insert(0, {"role": "assistant", "content": draw(SAFE_TEXT)})
    elif name == "surrogate":
        add_to_text(draw, record, draw(st.sampled_from(["\ud800", "\udfff", "a\udc80b"])))
    elif name == "special_tokens":
        add_to_text(draw, record, draw(SPECIAL_TEXT))
    elif name == "huge":
        seed = draw(SAFE_TEXT.filter(bool))
        add_to_text(draw, record, seed * (HUGE_CHARS // len(seed) + 1))
    elif name == "empty_strings" and has_list:
        for m in messages:
            if isinstance(m, dict) and m.get("role") in ("system", "user"):
                m["content"] = draw(st.sampled_from(["", [], [text_part("")]]))
    elif name == "extra_keys" and isinstance(record, dict):
        record["id"] = draw(JUNK)
        if target is not None:
            target.update({"name": draw(JUNK), "weight": draw(JUNK)})
    elif name == "media":
        add_media(draw, record, table, kinds)
    return record


MUTATIONS = (
    "not_a_dict",
    "messages_junk",
    "drop_messages",
    "empty_messages",
    "message_junk",
    "role",
    "content",
    "bad_part",
    "no_assistant",
    "assistant_first",
    "surrogate",
    "special_tokens",
    "special_tokens",
    "huge",
    "huge",
    "empty_strings",
    "extra_keys",
    "media",
)


@st.composite
def records(draw, table: dict, kinds: tuple[str, ...]) -> Any:
    """A conversation (half of them with media, mostly of `kinds`), then up to two mutations."""
    record = draw(conversations())
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        add_media(draw, record, table, kinds)
    for name in draw(st.lists(st.sampled_from(MUTATIONS), max_size=2)):
        record = mutate(draw, record, name, table, kinds)
    return record


def serialize(draw, record: Any) -> bytes:
    """One jsonl line (no newline), sometimes broken at the byte level."""
    ascii_only = draw(st.booleans())
    # ensure_ascii=False writes a lone surrogate as itself: "surrogatepass" makes it invalid UTF-8.
    line = json.dumps(record, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    damage = draw(
        st.sampled_from(
            ["none"] * 14 + ["invalid_utf8", "truncate", "bom", "trailing", "garbage", "deep", "bigint"]
        )
    )
    if damage == "invalid_utf8":
        at = draw(st.integers(0, len(line)))
        line = line[:at] + draw(INVALID_UTF8) + line[at:]
    elif damage == "truncate" and len(line) > 1:
        line = line[: draw(st.integers(1, len(line) - 1))]
    elif damage == "bom":
        line = b"\xef\xbb\xbf" + line
    elif damage == "trailing":
        line = line + draw(st.sampled_from([b" x", b",", b"}", b" {}", b"\x00"]))
    elif damage == "garbage":
        line = draw(st.binary(min_size=1, max_size=40) | SAFE_TEXT.map(lambda s: s.encode()))
    elif damage == "deep":
        depth = draw(st.sampled_from([2000, 100_000]))
        line = b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
    elif damage == "bigint":
        line = b'{"messages": [], "id": ' + b"7" * 5000 + b"}"
    return line.replace(b"\n", b" ")


VALID = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


@st.composite
def jsonl_files(draw, table: dict, kinds: tuple[str, ...] = ()) -> list[bytes]:
    """The lines of a jsonl file: fuzzed records, one plain valid one (so the dataset is never
    empty), and blank lines."""
    lines = [
        serialize(draw, record) for record in draw(st.lists(records(table, kinds), min_size=1, max_size=8))
    ]
    lines.insert(draw(st.integers(0, len(lines))), json.dumps(VALID).encode())
    for _ in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from([b"", b"   ", b"\t\r"])))
    return lines


# ---------------------------------------------------------------- running the loader


def write_dataset(folder: Path, lines: list[bytes], media_root: Path) -> tuple[Path, Path]:
    """(the jsonl, a dataset yaml that gives it media_root/media as data_folder)."""
    jsonl = folder / "fuzz.jsonl"
    jsonl.write_bytes(b"\n".join(lines) + b"\n")
    yaml_path = folder / "fuzz.yaml"
    yaml_path.write_text(
        f"datasets:\n  - path: {json.dumps(str(jsonl))}\n"
        f"    data_folder: {json.dumps(str(media_root / 'media'))}\n    data_type: jsonl\n"
    )
    return jsonl, yaml_path


def outcomes_of(lines: list[bytes], mode: Mode, table: dict) -> dict[int, Outcome]:
    """1-based line number -> outcome, for every record line (blank lines are not records)."""
    outcomes = {n: expected_outcome(line, mode, table) for n, line in enumerate(lines, start=1)}
    return {n: o for n, o in outcomes.items() if not o.blank}


def build(mode: Mode, yaml_path: Path, cache: Path, on_error: str, **kwargs):
    return build_sft_dataset(
        mode.tokenizer,
        DataSettings(
            yaml_path,
            packing_length=PACKING_LENGTH,
            on_error=on_error,
            num_proc=kwargs.pop("num_proc", 1),
            cache_dir=cache,
            **kwargs,
        ),
        **mode.inputs,
    )


def check_skip(mode: Mode, jsonl: Path, yaml_path: Path, outcomes: dict[int, Outcome], cache: Path, **kwargs):
    """on_error=skip: exact counts by reason; every valid line one sample with exact labels."""
    dataset = build(mode, yaml_path, cache, "skip", **kwargs)
    bad = Counter(o.reason for o in outcomes.values() if o.bad)
    valid = {n: o.record for n, o in outcomes.items() if not o.bad}
    overlong = {n for n, record in valid.items() if is_overlong(record, mode)}
    stats = dataset.stats
    assert stats["records"] == len(outcomes)
    assert stats["skipped_by_reason"] == dict(bad) and stats["skipped"] == sum(bad.values())
    assert stats["dropped_overlong"] == len(overlong)
    kept = {}
    for i in range(len(dataset)):
        sample = dataset[i]
        source, line = sample.sample_id.rsplit(":", 1)
        assert source == str(jsonl) and int(line) not in kept
        kept[int(line)] = sample
    assert set(kept) == set(valid) - overlong  # nothing of a bad line is in the dataset
    for line, sample in kept.items():
        record = valid[line]
        trained = sample.labels[sample.labels != IGNORE_INDEX].tolist()
        assert trained == trained_ids(record, mode), f"line {line}: wrong trained tokens"
        # The model sees exactly the rendered conversation, each media item's placeholders expanded.
        assert collapsed(sample.input_ids, mode) == mode.encode(rendered(record)), f"line {line}"
    if mode.kinds:  # media of the kept samples loads at collate time too
        for batch in dataset.micro_batches(0):
            dataset.collate(batch)
    return dataset


def check_raise(mode: Mode, jsonl: Path, yaml_path: Path, outcomes: dict[int, Outcome], cache: Path) -> None:
    """on_error=raise: the first bad line (file order) stops the build, named with its reason."""
    bad_lines = sorted(n for n, o in outcomes.items() if o.bad)
    if not bad_lines:
        build(mode, yaml_path, cache, "raise")
        return
    first = bad_lines[0]
    with pytest.raises(DataError) as raised:
        build(mode, yaml_path, cache, "raise")
    error = raised.value
    assert type(error) is DataError  # a record error, not a source (config) error
    assert error.where == f"{jsonl}:{first}" and str(error).startswith(f"{jsonl}:{first}: ")
    assert error.reason == outcomes[first].reason


def check_report(jsonl: Path, yaml_path: Path, outcomes: dict[int, Outcome], model_args: list[str]) -> None:
    """`lmms-data check` prints every bad line as `file:line: [reason]`, counts records and valid
    samples, and exits 1 when a line is bad."""
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["check", str(yaml_path), "--num-proc", "1", *model_args])
    text = out.getvalue()
    bad = {n: o.reason for n, o in outcomes.items() if o.bad}
    reported = re.findall(rf"^{re.escape(str(jsonl))}:(\d+): \[(\w+)\] ", text, flags=re.MULTILINE)
    assert {int(n): reason for n, reason in reported} == bad and len(reported) == len(bad), text
    assert f"records:        {len(outcomes)}\n" in text
    assert f"valid samples:  {len(outcomes) - len(bad)}\n" in text
    assert code == (1 if bad else 0)


def run_fuzz(mode: Mode, media_root: Path, lines: list[bytes], **kwargs) -> None:
    table = media_table(media_root)
    outcomes = outcomes_of(lines, mode, table)
    for outcome in outcomes.values() if currently_in_test_context() else ():  # --hypothesis-show-statistics
        media = not outcome.bad and any(media_kind(p) for m in outcome.record["messages"] for p in parts(m))
        long = not outcome.bad and is_overlong(outcome.record, mode)
        event(f"{mode.name}: {outcome.reason or 'valid'}{' with media' * media}{' overlong' * long}")
    with tempfile.TemporaryDirectory(dir=media_root) as folder:
        jsonl, yaml_path = write_dataset(Path(folder), lines, media_root)
        cache = Path(folder) / "cache"
        check_skip(mode, jsonl, yaml_path, outcomes, cache, **kwargs)
        check_raise(mode, jsonl, yaml_path, outcomes, cache)
        check_report(jsonl, yaml_path, outcomes, mode.check_args)


# ---------------------------------------------------------------- the fuzz tests


@pytest.fixture(scope="module")
def table(media_files) -> dict:
    return media_table(media_files)


@FUZZ
@given(data=st.data())
def test_fuzz_text_model(modes, media_files, table, data):
    run_fuzz(modes["text"], media_files, data.draw(jsonl_files(table)))


@FUZZ
@given(data=st.data())
def test_fuzz_vision_language_model(modes, media_files, table, data):
    run_fuzz(modes["vl"], media_files, data.draw(jsonl_files(table, ("image", "video"))))


@FUZZ
@given(data=st.data())
def test_fuzz_audio_model(modes, media_files, table, data):
    run_fuzz(modes["audio"], media_files, data.draw(jsonl_files(table, ("audio",))))


@pytest.mark.slow
@settings(FUZZ, max_examples=15)
@given(data=st.data())
def test_fuzz_in_worker_processes(modes, media_files, table, data):
    """Many small chunks over two forked workers: errors cross the process boundary intact."""
    lines = data.draw(st.lists(jsonl_files(table), min_size=2, max_size=4).map(lambda f: sum(f, [])))
    mode = modes[data.draw(st.sampled_from(sorted(modes)))]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prepare, "CHUNK_SIZE", 3)
        run_fuzz(mode, media_files, lines, num_proc=2)


# ---------------------------------------------------------------- what the fuzz found

# Each of these raised something other than a DataError (a TypeError, RecursionError, OSError or a
# ValueError without file:line), which stopped the run even with on_error=skip.
FOUND = [
    (b'{"messages": [{"role": "user", "content": [{"type": ["image"]}]}]}', "bad_part", "text"),
    (b'{"messages": [{"role": "user", "content": [{"type": {"a": 1}}]}]}', "bad_part", "text"),
    (
        b'{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "a"}]}',
        "not_utf8",
        "text",
    ),
    (
        b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc80"}]}]}',
        "not_utf8",
        "text",
    ),
    (b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", "malformed_json", "text"),
    (b'{"messages": [], "id": ' + b"1" * 5000 + b"}", "malformed_json", "text"),
    (
        b'{"messages": [{"role": "user", "content": [{"type": "image", "image": "http://[::1/a.png"}]}, '
        b'{"role": "assistant", "content": "a"}]}',
        "media_url_unsupported",
        "vl",
    ),
    (
        b'{"messages": [{"role": "user", "content": [{"type": "image", "image": "'
        + b"x" * 300
        + b'.png"}]}, '
        b'{"role": "assistant", "content": "a"}]}',
        "media_missing",
        "vl",
    ),
    (
        b'{"messages": [{"role": "user", "content": [{"type": "image", "image": "file:../outside.png"}]}, '
        b'{"role": "assistant", "content": "a"}]}',
        "media_url_unsupported",
        "vl",
    ),
]


@pytest.mark.parametrize(("line", "reason", "mode_name"), FOUND)
def test_found_by_fuzzing(modes, media_files, line, reason, mode_name):
    mode = modes[mode_name]
    lines = [json.dumps(VALID).encode(), line]
    assert outcomes_of(lines, mode, media_table(media_files))[2].reason == reason
    run_fuzz(mode, media_files, lines)


def test_long_junk_is_quoted_short(modes, media_files):
    """A huge junk value is cut in the error message (it is printed for every bad record)."""
    role = "r" * 100_000
    lines = [json.dumps({"messages": [{"role": role, "content": "x"}]}).encode(), json.dumps(VALID).encode()]
    with tempfile.TemporaryDirectory(dir=media_files) as folder:
        _, yaml_path = write_dataset(Path(folder), lines, media_files)
        with pytest.raises(DataError) as raised:
            build(modes["text"], yaml_path, Path(folder) / "cache", "raise")
    assert raised.value.reason == "unknown_role" and len(str(raised.value)) < 1000
