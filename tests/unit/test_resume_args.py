"""train/resume_args.py: the command line of a resume into an existing run directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmms_engine.train.resume_args import record_resume, resume_argv

RUN = ["model=tiny", "data=demo", "data.packing_length=256", "trainer.max_steps=4"]


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run directory as Hydra leaves it (only overrides.yaml matters here)."""
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(RUN))
    return tmp_path


def test_the_runs_own_overrides_come_first_and_a_repeated_key_takes_the_new_value(run_dir):
    argv = resume_argv([f"hydra.run.dir={run_dir}", "trainer.resume=auto", "trainer.max_steps=8"])
    assert argv == ["model=tiny", "data=demo", "data.packing_length=256", "trainer.resume=auto", "trainer.max_steps=8",
                    f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]


def test_flags_stay_and_repeating_the_runs_own_model_and_data_is_fine(run_dir):
    argv = resume_argv(["--cfg", "job", *RUN, f"hydra.run.dir={run_dir}", "trainer.resume=auto",
                        "data.cache_dir=/elsewhere"])  # how the data is prepared may change
    assert argv[:2] == ["--cfg", "job"] and argv[2:7] == [*RUN, "trainer.resume=auto"]


@pytest.mark.parametrize("argv", [
    ["trainer.resume=auto", "trainer.max_steps=8"],  # no run directory named
    ["hydra.run.dir={run_dir}", "trainer.max_steps=8"],  # no resume asked for: a fresh run there
    ["hydra.run.dir={run_dir}", "trainer.resume=null"],
    ["-m", "hydra.run.dir={run_dir}", "trainer.resume=auto"],  # multirun: one directory per job
    ["hydra.run.dir={run_dir}/elsewhere", "trainer.resume=auto"],  # no run there yet
])
def test_other_command_lines_are_left_as_they_are(run_dir, argv):
    argv = [arg.format(run_dir=run_dir) for arg in argv]
    assert resume_argv(argv) == argv


@pytest.mark.parametrize("override, keys", [
    ("data.packing_length=512", "(data.packing_length)"),
    ("data=demo_vl", "(data.dataset_path, data.image_max_pixels, data.image_min_pixels, data.video_fps, ...)"),
    ("model.config.hidden_size=64", "(model.config.hidden_size)"),
])
def test_a_changed_model_or_data_is_refused_naming_the_override_and_keys(run_dir, override, keys):
    with pytest.raises(ValueError) as err:
        resume_argv([f"hydra.run.dir={run_dir}", "trainer.resume=auto", override])
    message = str(err.value)
    assert message.startswith(f"resuming {run_dir}: {override} changes the run's model or data {keys}; ")
    assert "model=tiny data=demo data.packing_length=256" in message and "\n" not in message


def test_a_resume_is_recorded_with_the_overrides_beyond_the_runs_own(run_dir):
    for step in (4, 8):
        record_resume(run_dir, run_dir / "checkpoints" / f"step_{step}", step,
                      [*RUN, "trainer.resume=auto", f"trainer.max_steps={step + 4}"])
    entries = yaml.safe_load((run_dir / ".hydra" / "resumes.yaml").read_text())
    assert [(e["step"], e["overrides"]) for e in entries] == [
        (4, ["trainer.resume=auto", "trainer.max_steps=8"]), (8, ["trainer.resume=auto", "trainer.max_steps=12"])]
    assert entries[1]["checkpoint"] == str(run_dir / "checkpoints" / "step_8")
