"""scripts/bench_audio.py: its synthetic audio-chat batches (fast) and the whole `--tiny` run on the
CPU (slow: the padded stock baseline, the packed rmpad path and the encoder-only costs), checked on
the JSON report it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"


@pytest.fixture(scope="module")
def bench_audio():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench_audio

        yield bench_audio
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.fixture(scope="module")
def synthetic(bench_audio):
    from lmms_engine.data.media_audio import audio_settings

    processor = bench_audio.build_builtin_audio_processor(128)
    settings = audio_settings(processor, processor.tokenizer, 30.0, bench_audio.AUDIO_PAD, None)
    chat = bench_audio.ChatTokens.from_tokenizer(processor.tokenizer, 1024)
    samples = bench_audio.make_audio_samples(60, 0, chat, settings)
    return samples, settings, chat, processor.tokenizer.pad_token_id


def test_samples_carry_the_pipelines_placeholders_and_train_only_answers(bench_audio, synthetic):
    from lmms_engine.data.media_audio import audio_token_count

    samples, settings, chat, _ = synthetic
    seconds = [item.seconds for s in samples for item in s.media]
    assert 2.0 <= min(seconds) and max(seconds) <= 30.0
    for sample in samples:
        assert 1 <= len(sample.media) <= 2
        placeholders = int((sample.input_ids == chat.audio).sum())
        assert placeholders == sum(audio_token_count(item, settings) for item in sample.media)
        trained = sample.labels != -100
        assert not (sample.input_ids[trained] == chat.audio).any()  # placeholders are never trained
        assert (sample.labels[trained] == sample.input_ids[trained]).all()
        assert sample.input_ids[trained][-1] == chat.im_end  # the last answer ends with <|im_end|>


def test_packed_and_padded_batches_hold_the_same_clips(bench_audio, synthetic):
    samples, settings, chat, pad = synthetic
    indices = [0, 1, 2, 3]
    packed = bench_audio.AudioStepData(samples, True, pad, settings).collate(indices)
    padded = bench_audio.AudioStepData(samples, False, pad, settings).collate(indices)
    lengths = packed.audio_lengths
    assert padded.audio_lengths.tolist() == lengths.tolist()
    assert padded["feature_attention_mask"].sum(-1).tolist() == lengths.tolist()
    assert padded["input_features"].shape == (len(lengths), settings.n_mels, settings.max_frames)
    assert packed.audio_frames.tolist() == [min(n + 2, settings.max_frames) for n in lengths.tolist()]
    assert packed.audio_features.shape == (settings.n_mels, int(packed.audio_frames.sum()))
    assert int((packed.input_ids == chat.audio).sum()) == int((padded.input_ids == chat.audio).sum())


def test_padded_baseline_runs_as_many_micro_batches_on_every_rank(bench_audio, synthetic):
    samples, _, _, _ = synthetic
    packs = bench_audio.make_packs(samples, 2048, 4)
    cfg = bench_audio.config_for("hf_padded_sdpa")
    per_rank = [bench_audio.rank_steps(packs, cfg, 2, rank, 2) for rank in range(2)]
    assert [len(step) for step in per_rank[0]] == [len(step) for step in per_rank[1]]
    for rank, steps in enumerate(per_rank):
        for i, step in enumerate(steps):
            assert all(1 <= len(mb) <= 2 for mb in step)
            assert sorted(sum(step, [])) == sorted(packs[2 * i + rank])  # its own pack of the step


@pytest.mark.slow
def test_tiny_cpu_run_writes_a_complete_report(tmp_path):
    out = tmp_path / "bench_audio.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, str(SCRIPTS / "bench_audio.py"), "--tiny", "--out", str(out)], cwd=REPO, env=env,
                   check=True, timeout=540)
    report = json.loads(out.read_text())
    for key in ("model", "card", "torch", "transformers", "tokens_per_step", "steps", "warmup", "parallel",
                "world_size", "audio_data", "data", "peak_flops", "results", "encoder"):
        assert key in report, key
    assert report["model"] == "tiny_qwen2_audio" and report["device"] == "cpu"
    assert [r["config"] for r in report["results"]] == ["hf_padded_sdpa", "packed_sdpa"]
    for result in report["results"]:
        assert "error" not in result, result
        for key in ("tokens_per_s", "tokens_per_s_per_gpu", "step_s", "mfu", "tokens_per_step", "peak_mem_gb",
                    "audio_seconds_per_s", "speedup_vs_baseline", "mem_vs_baseline"):
            assert result[key] > 0, (result["config"], key)
    encoder = report["encoder"]
    for key in ("stock_ms_per_audio_second", "rmpad_ms_per_audio_second", "audio_seconds", "speedup"):
        assert encoder[key] > 0, key
    assert encoder["padded_seconds"] == 30.0 * encoder["clips"]
    assert report["data"]["clips_per_pack"] > 0
