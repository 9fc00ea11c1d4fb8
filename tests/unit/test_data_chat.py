"""Chat templating and label masks: only assistant content + its end-of-turn token are trained."""

import numpy as np
import pytest

from lmms_engine.data.chat import IGNORE_INDEX, check_tokenizer, tokenize_batch, tokenize_record
from lmms_engine.data.errors import DataError, TemplateError
from lmms_engine.data.messages import parse_record
from lmms_engine.data.types import Provenance
from lmms_engine.models.tokenizer import build_byte_tokenizer

# Qwen2.5-style: a default system prompt when the conversation has none (written for this test).
DEFAULT_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a default assistant.<|im_end|>\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Prints the number of turns first, so a prefix render is never a prefix of the full render.
UNSTABLE_TEMPLATE = (
    "{{ messages|length }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NO_END_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def record(messages, line=1):
    return parse_record({"messages": messages}, Provenance("chat.jsonl", line, None, None))


def trained_text(tokenizer, ids, labels):
    return tokenizer.decode(ids[labels != IGNORE_INDEX].tolist())


def test_single_turn_trains_only_assistant_content_and_end_token(tokenizer):
    ids, labels = tokenize_record(
        tokenizer,
        record(
            [
                {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"},
            ]
        ),
    )
    assert ids.dtype == np.int32 and labels.dtype == np.int32 and ids.shape == labels.shape
    assert trained_text(tokenizer, ids, labels) == "Hello!<|im_end|>"
    assert tokenizer.decode(ids.tolist()).endswith("Hello!<|im_end|>\n")
    assert labels[-1] == IGNORE_INDEX  # the newline after <|im_end|> is not trained
    trained = np.flatnonzero(labels != IGNORE_INDEX)
    assert np.all(np.diff(trained) == 1)  # one contiguous span
    assert np.array_equal(labels[trained], ids[trained])  # labels are unshifted token ids


def test_multi_turn_with_system_trains_every_assistant_turn_only(tokenizer):
    ids, labels = tokenize_record(
        tokenizer,
        record(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": "And 3+3?"},
                {"role": "assistant", "content": "6"},
            ]
        ),
    )
    assert trained_text(tokenizer, ids, labels) == "4<|im_end|>6<|im_end|>"
    untrained = tokenizer.decode(ids[labels == IGNORE_INDEX].tolist())
    for prompt_text in ("Be brief.", "2+2?", "And 3+3?", "<|im_start|>assistant\n"):
        assert prompt_text in untrained


def test_multibyte_characters_are_masked_by_character_spans(tokenizer):
    ids, labels = tokenize_record(
        tokenizer,
        record(
            [
                {"role": "user", "content": "Café?"},
                {"role": "assistant", "content": "Ça va, naïve 東京"},
            ]
        ),
    )
    assert trained_text(tokenizer, ids, labels) == "Ça va, naïve 東京<|im_end|>"


def test_span_mask_matches_per_token_offset_mapping(tokenizer):
    """The boundary lookup gives exactly the mask of 'token start offset inside an assistant span'."""
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "q1 é"},
        {"role": "assistant", "content": "a1 ü"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    ids, labels = tokenize_record(tokenizer, record(messages))
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            start = len(
                tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            )
            end = text.index("<|im_end|>", start) + len("<|im_end|>")
            spans.append((start, end))
    expected = [any(s <= begin < e for s, e in spans) for begin, _ in encoded["offset_mapping"]]
    assert encoded["input_ids"] == ids.tolist()
    assert (labels != IGNORE_INDEX).tolist() == expected


def test_content_parts_of_text_equal_a_string(tokenizer):
    as_string = tokenize_record(
        tokenizer,
        record(
            [
                {"role": "user", "content": "ab"},
                {"role": "assistant", "content": "cd"},
            ]
        ),
    )
    as_parts = tokenize_record(
        tokenizer,
        record(
            [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "cd"}]},
            ]
        ),
    )
    assert all(np.array_equal(x, y) for x, y in zip(as_string, as_parts, strict=True))


def test_default_system_prompt_template_is_masked(tokenizer):
    tokenizer = build_byte_tokenizer()
    tokenizer.chat_template = DEFAULT_SYSTEM_TEMPLATE
    check_tokenizer(tokenizer)
    ids, labels = tokenize_record(
        tokenizer,
        record(
            [
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "first"},
                {"role": "user", "content": "v"},
                {"role": "assistant", "content": "second"},
            ]
        ),
    )
    assert "You are a default assistant." in tokenizer.decode(ids.tolist())
    assert trained_text(tokenizer, ids, labels) == "first<|im_end|>second<|im_end|>"


def test_template_that_is_not_prefix_stable_raises():
    tokenizer = build_byte_tokenizer()
    tokenizer.chat_template = UNSTABLE_TEMPLATE
    with pytest.raises(TemplateError, match="not prefix-stable"):
        check_tokenizer(tokenizer)
    with pytest.raises(TemplateError, match="not prefix-stable"):
        tokenize_record(
            tokenizer, record([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}])
        )


def test_template_without_end_of_turn_token_raises():
    tokenizer = build_byte_tokenizer()
    tokenizer.chat_template = NO_END_TEMPLATE
    with pytest.raises(TemplateError, match="does not close assistant turn"):
        check_tokenizer(tokenizer)


def test_media_part_is_rejected_for_a_text_model(tokenizer):
    rec = record(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "cat.jpg"}},
                    {"type": "text", "text": "?"},
                ],
            },
            {"role": "assistant", "content": "A cat."},
        ],
        line=7,
    )
    assert rec.messages[0].content[0].value == "cat.jpg"  # media parts are parsed and kept
    with pytest.raises(DataError, match=r"chat\.jsonl:7: .*text only") as caught:
        tokenize_record(tokenizer, rec)
    assert caught.value.reason == "media_on_text_model"


def test_batch_equals_one_by_one_and_keeps_errors_in_place(tokenizer):
    good = [
        record([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}], i)
        for i in range(5)
    ]
    media = record(
        [
            {"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]},
            {"role": "assistant", "content": "ok"},
        ],
        9,
    )
    results = tokenize_batch(tokenizer, good[:2] + [media] + good[2:])
    assert isinstance(results[2], DataError)
    for rec, result in zip(good, results[:2] + results[3:], strict=True):
        expected = tokenize_record(tokenizer, rec)
        assert all(np.array_equal(x, y) for x, y in zip(result, expected, strict=True))


def test_bpe_token_straddling_a_span_start_is_not_trained():
    """With merges across the header newline, the first content token starts before the span."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(["assistant\nThe answer"] * 50, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = build_byte_tokenizer().chat_template
    ids, labels = tokenize_record(
        tokenizer, record([{"role": "user", "content": "q"}, {"role": "assistant", "content": "The answer"}])
    )
    pieces = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert any("Ċ" in p and "T" in p for p in pieces)  # a merged "\nThe..." token exists
    assert trained_text(tokenizer, ids, labels).endswith("<|im_end|>")
    assert "\n" not in trained_text(tokenizer, ids, labels)  # the straddling token stays masked
