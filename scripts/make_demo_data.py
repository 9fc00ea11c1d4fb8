"""Write the bundled demo data under lmms_engine/data/demo/:

    uv run python scripts/make_demo_data.py

text_chat.jsonl + demo.yaml: about 400 short chats (arithmetic with correct answers, capitals, unit
conversions, glossary definitions, string reversal / uppercasing, short explanations), single- and
multi-turn, some with a system prompt. The phrasing is repetitive on purpose: a tiny byte-level
model learns the structure within ~100 steps.

vl_chat.jsonl + media/ + demo_vl.yaml (text and vision-language data together): about 200 chats
about small PNG images of one coloured shape (56..224 px; "what colour / what shape"), pairs of
images, multi-turn chats with images in later turns, and a few about one short video (16 frames,
64x64, a square moving left to right, encoded with PyAV's mpeg4). Well under 1 MB in all.

audio_chat.jsonl + media/audio/ + demo_audio.yaml (text and audio-language data together): about
100 chats about short synthetic clips (16 kHz mono PCM16 wav: sine tones of one note, 1-2.5 s, and
chords, 3-8 s; "what is the pitch / is it a chord / how long is it"), pairs of clips, multi-turn
chats with a clip in a later turn, and a few about one 35 s ascending scale (FLAC, longer than the
30 s audio window, so it is split into two clips). About 1 MB in all.

Deterministic: the same files on every run (`--audio-only` rewrites just the audio demo).
"""

from __future__ import annotations

import json
import random
import sys
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

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


# ---------------------------------------------------------------- vision-language demo

MEDIA_DIR = DEMO_DIR / "media"
NUM_VL_RECORDS = 200
NUM_IMAGES = 36
VL_SEED = 4321
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
}
SHAPES = ("circle", "square", "triangle")
IMAGE_SIDES = (56, 84, 112, 140, 168, 224)
VIDEO_NAME = "moving_square.mp4"
VIDEO_FRAMES, VIDEO_SIDE, VIDEO_FPS = 16, 64, 8


def draw_shape(shape: str, color: tuple[int, int, int], width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    margin = min(width, height) // 6
    box = (margin, margin, width - margin, height - margin)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        side = min(width, height) - 2 * margin
        left, top = (width - side) // 2, (height - side) // 2
        draw.rectangle((left, top, left + side, top + side), fill=color)
    else:
        draw.polygon(
            [(width // 2, margin), (width - margin, height - margin), (margin, height - margin)], fill=color
        )
    return image


def make_images(rng: random.Random) -> list[dict]:
    """NUM_IMAGES shape images (every colour x shape once, then random ones): name, colour, shape."""
    combos = [(c, s) for c in COLORS for s in SHAPES]
    while len(combos) < NUM_IMAGES:
        combos.append((rng.choice(sorted(COLORS)), rng.choice(SHAPES)))
    images = []
    for i, (color, shape) in enumerate(combos):
        width, height = rng.choice(IMAGE_SIDES), rng.choice(IMAGE_SIDES)
        name = f"shape_{i:02d}_{color}_{shape}.png"
        draw_shape(shape, COLORS[color], width, height).save(MEDIA_DIR / name, optimize=True)
        images.append({"file": name, "color": color, "shape": shape})
    return images


def make_video() -> None:
    """A blue square moving left to right over VIDEO_FRAMES frames (mpeg4 in mp4, via PyAV)."""
    import av

    with av.open(str(MEDIA_DIR / VIDEO_NAME), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=VIDEO_FPS)
        stream.width = stream.height = VIDEO_SIDE
        stream.pix_fmt = "yuv420p"
        for t in range(VIDEO_FRAMES):
            frame = np.full((VIDEO_SIDE, VIDEO_SIDE, 3), 245, dtype=np.uint8)
            left = 4 + t * (VIDEO_SIDE - 24) // (VIDEO_FRAMES - 1)
            frame[22:42, left : left + 16] = COLORS["blue"]
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def image_part(image: dict) -> dict:
    return {"type": "image_url", "image_url": image["file"]}


def image_question(rng: random.Random, image: dict) -> tuple[str, str]:
    color, shape = image["color"], image["shape"]
    return rng.choice(
        [
            ("What color is the shape?", f"The shape is {color}."),
            ("What shape is in the picture?", f"It is a {shape}."),
            ("Describe the image.", f"A {color} {shape} on a light gray background."),
            ("What do you see?", f"I see a {color} {shape}."),
        ]
    )


def single_image(rng: random.Random, images: list[dict]) -> list[dict]:
    image = rng.choice(images)
    question, answer = image_question(rng, image)
    parts = [image_part(image), {"type": "text", "text": question}]
    if rng.random() < 0.3:
        parts.reverse()  # question first, image after it
    return [{"role": "user", "content": parts}, {"role": "assistant", "content": answer}]


def two_images(rng: random.Random, images: list[dict]) -> list[dict]:
    first, second = rng.sample(images, 2)
    if rng.random() < 0.5:
        question = "Do the two shapes have the same color?"
        same = first["color"] == second["color"]
        answer = (
            f"{'Yes' if same else 'No'}: the first is {first['color']} and the second is {second['color']}."
        )
    else:
        question = "Name the shape in each image."
        answer = f"The first image shows a {first['shape']} and the second a {second['shape']}."
    content = [image_part(first), image_part(second), {"type": "text", "text": question}]
    return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]


def multi_turn(rng: random.Random, images: list[dict]) -> list[dict]:
    """A question about one image, then a new image in a later turn."""
    first, second = rng.sample(images, 2)
    messages = single_image(rng, [first])
    messages.append(
        {"role": "user", "content": [{"type": "text", "text": "And this one?"}, image_part(second)]}
    )
    messages.append({"role": "assistant", "content": f"This one is a {second['color']} {second['shape']}."})
    return messages


def video_chat(rng: random.Random, images: list[dict]) -> list[dict]:
    question, answer = rng.choice(
        [
            ("What color is the moving square?", "The moving square is blue."),
            ("Which way does the square move?", "The square moves from left to right."),
            ("Describe the video.", "A blue square slides from the left edge to the right edge."),
        ]
    )
    content = [{"type": "video_url", "video_url": VIDEO_NAME}, {"type": "text", "text": question}]
    return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]


VL_TASKS = [single_image] * 5 + [two_images] * 2 + [multi_turn] * 2 + [video_chat]


def make_vl_records(count: int, rng: random.Random, images: list[dict]) -> list[dict]:
    records = []
    for _ in range(count):
        messages = rng.choice(VL_TASKS)(rng, images)
        if rng.random() < 0.2:
            messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        records.append({"messages": messages})
    return records


def write_vl_demo() -> int:
    MEDIA_DIR.mkdir(parents=True, exist_ok=True)
    rng = random.Random(VL_SEED)
    images = make_images(rng)
    make_video()
    records = make_vl_records(NUM_VL_RECORDS, rng, images)
    with (DEMO_DIR / "vl_chat.jsonl").open("w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    (DEMO_DIR / "demo_vl.yaml").write_text(
        "# Bundled vision-language demo data: the text chats plus chats about images and a video.\n"
        "# Regenerate with: uv run python scripts/make_demo_data.py\n"
        "# Relative paths (path and data_folder) are tried against the working directory first, then\n"
        "# this file's folder. Media paths in vl_chat.jsonl resolve under data_folder.\n"
        "datasets:\n"
        "  - path: text_chat.jsonl\n"
        '    data_folder: ""\n'
        "    data_type: jsonl\n"
        "  - path: vl_chat.jsonl\n"
        "    data_folder: media\n"
        "    data_type: jsonl\n"
    )
    return len(records)


# ---------------------------------------------------------------- audio-language demo

AUDIO_DIR = MEDIA_DIR / "audio"
NUM_AUDIO_RECORDS = 100
AUDIO_SEED = 2468
AUDIO_RATE = 16000
NOTES = {
    "G3": 196.00,
    "A3": 220.00,
    "B3": 246.94,
    "C4": 261.63,
    "D4": 293.66,
    "E4": 329.63,
    "F4": 349.23,
    "G4": 392.00,
    "A4": 440.00,
    "B4": 493.88,
    "C5": 523.25,
}
TONE_NOTES = ("C4", "D4", "E4", "F4", "G4", "A4", "B4", "C5")
TONE_SECONDS = (1.0, 1.5, 2.0, 2.5)
CHORDS = {"C major": ("C4", "E4", "G4"), "A minor": ("A3", "C4", "E4"), "G major": ("G3", "B3", "D4")}
CHORD_SECONDS = (3.0, 4.0, 8.0)
SCALE_NAME, SCALE_SECONDS = "c_major_scale_35s.flac", 35.0


def synth(frequencies: tuple[float, ...], seconds: float) -> np.ndarray:
    """int16 samples of equal-amplitude sines, with 20 ms fades so clips do not click."""
    t = np.arange(round(seconds * AUDIO_RATE)) / AUDIO_RATE
    signal = sum(np.sin(2 * np.pi * f * t) for f in frequencies) / len(frequencies)
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)
    return np.round(0.3 * 32767 * signal * fade).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(AUDIO_RATE)
        handle.writeframes(samples.tobytes())


def write_flac(path: Path, samples: np.ndarray) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("flac", rate=AUDIO_RATE, layout="mono", format="s16")
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_audio_clips() -> list[dict]:
    """Tones (one per note, durations cycling through TONE_SECONDS), chords and the long scale."""
    AUDIO_DIR.mkdir(parents=True, exist_ok=True)
    clips = []
    for i, note in enumerate(TONE_NOTES):
        seconds = TONE_SECONDS[i % len(TONE_SECONDS)]
        name = f"tone_{note}.wav"
        write_wav(AUDIO_DIR / name, synth((NOTES[note],), seconds))
        clips.append({"file": name, "kind": "tone", "note": note, "seconds": seconds})
    for (chord, notes), seconds in zip(CHORDS.items(), CHORD_SECONDS, strict=True):
        name = f"chord_{chord.replace(' ', '_').lower()}.wav"
        write_wav(AUDIO_DIR / name, synth(tuple(NOTES[n] for n in notes), seconds))
        clips.append({"file": name, "kind": "chord", "chord": chord, "notes": notes, "seconds": seconds})
    scale = ("C4", "D4", "E4", "F4", "G4", "A4", "B4", "C5")
    step = SCALE_SECONDS / len(scale)
    write_flac(AUDIO_DIR / SCALE_NAME, np.concatenate([synth((NOTES[n],), step) for n in scale]))
    clips.append({"file": SCALE_NAME, "kind": "scale", "seconds": SCALE_SECONDS})
    return clips


def audio_part(clip: dict) -> dict:
    return {"type": "audio_url", "audio_url": clip["file"]}


def describe(clip: dict) -> str:
    if clip["kind"] == "tone":
        return f"a single tone, {clip['note']} ({NOTES[clip['note']]:g} Hz)"
    if clip["kind"] == "chord":
        return f"a {clip['chord']} chord ({', '.join(clip['notes'])})"
    return "an ascending C major scale from C4 to C5"


def audio_question(rng: random.Random, clip: dict) -> tuple[str, str]:
    choices = [
        ("How long is the clip?", f"About {clip['seconds']:g} seconds."),
        ("Describe the sound.", f"It is {describe(clip)}."),
    ]
    if clip["kind"] == "tone":
        choices += [
            ("What is the pitch?", f"The pitch is {clip['note']}, {NOTES[clip['note']]:g} Hz."),
            ("What note is this?", f"It is {clip['note']}."),
            ("Is this a single note or a chord?", "It is a single note."),
        ]
    elif clip["kind"] == "chord":
        choices += [
            (
                "What is the pitch?",
                f"It is a chord, not one pitch: {clip['chord']} ({', '.join(clip['notes'])}).",
            ),
            ("Is this a single note or a chord?", f"It is a chord: {clip['chord']}."),
        ]
    else:
        choices += [("What notes are played?", "C4, D4, E4, F4, G4, A4, B4 and C5, one after another.")]
    return rng.choice(choices)


def single_audio(rng: random.Random, clips: list[dict]) -> list[dict]:
    clip = rng.choice(clips)
    question, answer = audio_question(rng, clip)
    parts = [audio_part(clip), {"type": "text", "text": question}]
    if rng.random() < 0.3:
        parts.reverse()  # question first, audio after it
    return [{"role": "user", "content": parts}, {"role": "assistant", "content": answer}]


def two_tones(rng: random.Random, clips: list[dict]) -> list[dict]:
    first, second = rng.sample([c for c in clips if c["kind"] == "tone"], 2)
    higher = "first" if NOTES[first["note"]] > NOTES[second["note"]] else "second"
    content = [
        audio_part(first),
        audio_part(second),
        {"type": "text", "text": "Which of the two notes is higher?"},
    ]
    answer = f"The {higher} one: {first['note']} then {second['note']}."
    return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]


def audio_multi_turn(rng: random.Random, clips: list[dict]) -> list[dict]:
    """A question about one clip, then a new clip in a later turn."""
    first, second = rng.sample(clips, 2)
    messages = single_audio(rng, [first])
    messages.append(
        {"role": "user", "content": [{"type": "text", "text": "And this one?"}, audio_part(second)]}
    )
    messages.append({"role": "assistant", "content": f"This one is {describe(second)}."})
    return messages


AUDIO_TASKS = [single_audio] * 5 + [two_tones] * 2 + [audio_multi_turn] * 2


def write_audio_demo() -> int:
    rng = random.Random(AUDIO_SEED)
    clips = make_audio_clips()
    records = []
    for _ in range(NUM_AUDIO_RECORDS):
        messages = rng.choice(AUDIO_TASKS)(rng, clips)
        if rng.random() < 0.2:
            messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        records.append({"messages": messages})
    with (DEMO_DIR / "audio_chat.jsonl").open("w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    (DEMO_DIR / "demo_audio.yaml").write_text(
        "# Bundled audio-language demo data: the text chats plus chats about short tones and chords.\n"
        "# Regenerate with: uv run python scripts/make_demo_data.py --audio-only\n"
        "# Relative paths (path and data_folder) are tried against the working directory first, then\n"
        "# this file's folder. Audio paths in audio_chat.jsonl resolve under data_folder.\n"
        "datasets:\n"
        "  - path: text_chat.jsonl\n"
        '    data_folder: ""\n'
        "    data_type: jsonl\n"
        "  - path: audio_chat.jsonl\n"
        "    data_folder: media/audio\n"
        "    data_type: jsonl\n"
    )
    return len(records)


def main() -> None:
    if "--audio-only" in sys.argv[1:]:
        print(f"wrote {write_audio_demo()} records to {DEMO_DIR / 'audio_chat.jsonl'} (audio in {AUDIO_DIR})")
        return
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
    print(f"wrote {write_vl_demo()} records to {DEMO_DIR / 'vl_chat.jsonl'} (media in {MEDIA_DIR})")
    print(f"wrote {write_audio_demo()} records to {DEMO_DIR / 'audio_chat.jsonl'} (audio in {AUDIO_DIR})")


if __name__ == "__main__":
    main()
