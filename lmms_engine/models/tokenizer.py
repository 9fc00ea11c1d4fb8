"""A byte-level tokenizer with ChatML specials, built in code so the tiny presets need no download.

Every UTF-8 byte is one token (ids 0..255); the ChatML specials follow. Its chat template is Qwen's
ChatML without the default system prompt, so templating, label masks and packing behave as they do
with a real Qwen tokenizer.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_vocab() -> dict[str, int]:
    """The 256 printable stand-ins that byte-level BPE uses for raw bytes, in byte order."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet), "byte alphabet mismatch"
    return vocab


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character map (the one ByteLevel uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def build_byte_tokenizer(model_max_length: int = 32768) -> PreTrainedTokenizerFast:
    """A fast tokenizer: one token per byte, ChatML specials, Qwen-style chat template."""
    core = Tokenizer(models.BPE(vocab=_byte_vocab(), merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        model_max_length=model_max_length,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=CHATML_SPECIALS[1:],
    )
    tokenizer.add_special_tokens({"additional_special_tokens": CHATML_SPECIALS[1:]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
