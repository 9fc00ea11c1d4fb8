"""Write the bundled demo data: lmms_engine/data/demo/text_chat.jsonl and demo.yaml.

    uv run python scripts/make_demo_data.py

About 400 short chats (arithmetic with correct answers, capitals, unit conversions, glossary
definitions, string reversal / uppercasing, short explanations), single- and multi-turn, some with
a system prompt. The phrasing is repetitive on purpose: a tiny byte-level model learns the
structure within ~100 steps. Deterministic: the same files on every run.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parents[1] / "lmms_engine" / "data" / "demo"
NUM_RECORDS = 400
MAX_RECORD_BYTES = 600
SEED = 1234

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Japan": "Tokyo",
    "China": "Beijing",
    "India": "New Delhi",
    "Canada": "Ottawa",
    "Mexico": "Mexico City",
    "Brazil": "Brasilia",
    "Argentina": "Buenos Aires",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Australia": "Canberra",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Poland": "Warsaw",
    "Greece": "Athens",
    "Turkey": "Ankara",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Ireland": "Dublin",
    "Austria": "Vienna",
    "Netherlands": "Amsterdam",
    "South Korea": "Seoul",
    "Morocco": "Rabat",
}

# (from unit, to unit, factor): value_in_to = value_in_from * factor
CONVERSIONS = [
    ("kilometers", "meters", 1000),
    ("meters", "centimeters", 100),
    ("kilograms", "grams", 1000),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("liters", "milliliters", 1000),
    ("feet", "inches", 12),
    ("days", "hours", 24),
    ("weeks", "days", 7),
    ("yards", "feet", 3),
]

GLOSSARY = {
    "photosynthesis": "the process by which plants use sunlight, water and carbon dioxide to make sugar and oxygen",
    "gravity": "the force that pulls objects with mass toward each other",
    "evaporation": "the change of a liquid into a gas, usually when it is heated",
    "democracy": "a system of government in which citizens choose their leaders by voting",
    "algorithm": "a finite list of precise steps that solves a problem",
    "molecule": "a group of atoms held together by chemical bonds",
    "ecosystem": "a community of living things together with their physical environment",
    "inflation": "a general rise in prices that lowers what money can buy",
    "metaphor": "a figure of speech that describes a thing as if it were something else",
    "volcano": "an opening in the earth's crust through which molten rock and gas escape",
    "fraction": "a number that represents a part of a whole, written as one number over another",
    "habitat": "the natural home of an animal or plant",
    "glacier": "a large, slow-moving mass of ice formed from compacted snow",
    "orbit": "the curved path of an object around a star, planet or moon",
    "vaccine": "a substance that trains the immune system to recognise a disease",
    "prime number": "a whole number greater than 1 whose only divisors are 1 and itself",
    "noun": "a word that names a person, place, thing or idea",
    "verb": "a word that describes an action, state or occurrence",
    "erosion": "the wearing away of rock and soil by wind, water or ice",
    "battery": "a device that stores chemical energy and releases it as electricity",
}

EXPLANATIONS = {
    "Why is the sky blue?": "Sunlight is scattered by the air, and blue light is scattered much more than red "
    "light because its wavelength is shorter. So blue light reaches our eyes from every part of the sky.",
    "Why do we have seasons?": "The Earth's axis is tilted. As the Earth orbits the Sun, each hemisphere leans "
    "toward the Sun for part of the year (summer) and away from it for another part (winter).",
    "Why does ice float on water?": "Water expands when it freezes, so ice is less dense than liquid water. "
    "Anything less dense than water floats on it.",
    "Why does the Moon have phases?": "The Moon is lit by the Sun. As it orbits the Earth we see different "
    "amounts of its sunlit half, from new moon to full moon and back.",
    "How does a rainbow form?": "Sunlight enters raindrops, bends, reflects inside them and bends again on the "
    "way out. Each colour bends by a different amount, so the light spreads into a band of colours.",
    "Why do leaves change colour in autumn?": "Trees stop making green chlorophyll when days get shorter. As the "
    "chlorophyll fades, yellow and orange pigments that were already in the leaf become visible.",
    "What causes thunder?": "Lightning heats the air around it very quickly. The air expands explosively, and "
    "that sudden expansion makes the sound we hear as thunder.",
    "Why do we need sleep?": "Sleep lets the body repair tissue and lets the brain store memories and clear "
    "waste. Without enough sleep, attention and mood get worse.",
}

WORDS = [
    "apple",
    "planet",
    "garden",
    "river",
    "window",
    "silver",
    "rocket",
    "pencil",
    "forest",
    "market",
    "orange",
    "bridge",
    "candle",
    "dragon",
    "island",
    "yellow",
    "guitar",
    "winter",
    "ticket",
    "summer",
]
PHRASES = [
    "hello world",
    "good morning",
    "open the door",
    "machine learning",
    "blue sky",
    "small steps",
    "data pipeline",
    "happy birthday",
    "read the manual",
    "fresh bread",
]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in one sentence.",
    "You are a friendly tutor who gives exact answers.",
]


def arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice(["+", "-", "*"])
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    question = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}."])
    return question.format(a=a, op=op, b=b), f"{a} {op} {b} = {result}."


def capital(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(sorted(CAPITALS))
    question = rng.choice(
        ["What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital of {c}."]
    )
    return question.format(c=country), f"The capital of {country} is {CAPITALS[country]}."


def conversion(rng: random.Random) -> tuple[str, str]:
    source, target, factor = rng.choice(CONVERSIONS)
    value = rng.randint(1, 20)
    question = rng.choice(["Convert {v} {s} to {t}.", "How many {t} are in {v} {s}?"])
    return question.format(v=value, s=source, t=target), f"{value} {source} is {value * factor} {target}."


def definition(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(sorted(GLOSSARY))
    question = rng.choice(["Define '{w}'.", "What does '{w}' mean?", "Give a short definition of '{w}'."])
    return question.format(w=word), f"'{word.capitalize()}' means {GLOSSARY[word]}."


def reverse(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    question = rng.choice(["Reverse the string '{w}'.", "Write '{w}' backwards."])
    return question.format(w=word), f"'{word}' reversed is '{word[::-1]}'."


def uppercase(rng: random.Random) -> tuple[str, str]:
    phrase = rng.choice(PHRASES)
    question = rng.choice(["Convert '{p}' to uppercase.", "Write '{p}' in capital letters."])
    return question.format(p=phrase), f"'{phrase}' in uppercase is '{phrase.upper()}'."


def explanation(rng: random.Random) -> tuple[str, str]:
    question = rng.choice(sorted(EXPLANATIONS))
    return question, EXPLANATIONS[question]


TASKS: list[Callable[[random.Random], tuple[str, str]]] = [
    arithmetic,
    capital,
    conversion,
    definition,
    reverse,
    uppercase,
    explanation,
]


def arithmetic_follow_up(rng: random.Random, previous_answer: str) -> tuple[str, str] | None:
    """'Now add 10 to that.' after an arithmetic answer: a multi-turn exchange that needs context."""
    if " = " not in previous_answer:
        return None
    value = int(previous_answer.split(" = ")[1].rstrip("."))
    extra = rng.randint(2, 20)
    return f"Now add {extra} to that.", f"{value} + {extra} = {value + extra}."


def make_record(rng: random.Random) -> dict:
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for turn in range(rng.choice([1, 1, 1, 2, 2, 3])):
        follow_up = (
            arithmetic_follow_up(rng, messages[-1]["content"]) if turn and rng.random() < 0.5 else None
        )
        question, answer = follow_up or rng.choice(TASKS)(rng)
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def make_records(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    while len(records) < count:
        record = make_record(rng)
        if len(json.dumps(record).encode()) <= MAX_RECORD_BYTES:
            records.append(record)
    return records


def main() -> None:
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    records = make_records(NUM_RECORDS, SEED)
    with (DEMO_DIR / "text_chat.jsonl").open("w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    (DEMO_DIR / "demo.yaml").write_text(
        "# Bundled demo data: short text chats a tiny model can learn in ~100 steps.\n"
        "# Regenerate with: uv run python scripts/make_demo_data.py\n"
        "# A relative path is tried against the working directory first, then this file's folder.\n"
        "datasets:\n"
        "  - path: text_chat.jsonl\n"
        '    data_folder: ""\n'
        "    data_type: jsonl\n"
    )
    print(f"wrote {len(records)} records to {DEMO_DIR / 'text_chat.jsonl'}")


if __name__ == "__main__":
    main()
