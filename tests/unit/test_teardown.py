"""Teardown (issue 21): process groups are freed, and their threads joined, before interpreter exit.

The abort this prevents: a gloo worker thread still retiring the job's last collective when the
interpreter finalizes needs the GIL to free that work's tensors, is ended by pthread_exit inside a
noexcept destructor, and the process dies with "terminate called without an active exception".
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import signal
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from lmms_engine.parallel import dist as pdist
from lmms_engine.parallel.deepspeed_release import release_engine
from lmms_engine.train.shutdown import release_frames, sigterm_exits

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import stress_exit  # noqa: E402

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="thread names come from /proc (Linux)")


@pytest.fixture
def gloo_world(tmp_path):
    """A one-rank gloo job (its threads: a transport loop and two workers); the test makes more groups
    with _used_group() (kept out of this frame, which would otherwise hold them)."""
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    dist.all_reduce(torch.ones(4))
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        gc.collect()


def _used_group():
    group = dist.new_group([0])
    dist.all_reduce(torch.ones(4), group=group)
    return group


class _Engine:
    """Stands for a DeepSpeed engine / DDP module: holds the groups inside a reference cycle."""

    def __init__(self, groups):
        self.groups, self.me = groups, self


@needs_proc
def test_destroy_frees_groups_held_only_by_cycles_and_joins_their_threads(gloo_world, caplog):
    _Engine([dist.group.WORLD, _used_group()])  # unreachable, but alive until a collection
    assert pdist.process_group_threads().count("pt_gloo_runloop") >= 2  # the test can see what it checks
    with caplog.at_level(logging.WARNING, logger="lmms_engine.parallel.dist"):
        pdist.destroy()
    assert not dist.is_initialized()
    assert pdist.process_group_threads() == []
    assert "still alive" not in caplog.text


@needs_proc
def test_destroy_names_threads_of_a_group_still_referenced(gloo_world, caplog):
    held = _Engine([_used_group()])
    with caplog.at_level(logging.WARNING, logger="lmms_engine.parallel.dist"):
        pdist.destroy()
    assert "process-group threads still alive after teardown: " in caplog.text
    assert "pt_gloo_runloop" in caplog.text
    del held
    gc.collect()
    assert pdist.process_group_threads() == []


@needs_proc
def test_a_module_imported_after_joining_does_not_keep_the_world_group(tmp_path):
    """torch.distributed.nn binds `group=WORLD` defaults at import; transformers' save_pretrained imports
    it (through torch.distributed.fsdp) after the job started. pdist.init_process_group imports it first,
    so the defaults stay None and destroy() frees the group. In a fresh interpreter: nothing imported yet."""
    import subprocess

    script = f"""
import os, sys
os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="{_free_port()}")
import torch
from lmms_engine.parallel import dist as pdist
assert "torch.distributed.nn.functional" not in sys.modules
pdist.init_process_group(torch.device("cpu"))
import torch.distributed as dist
dist.all_reduce(torch.ones(2))
import torch.distributed.nn.functional as fn
print("DEFAULT", fn.broadcast.__defaults__)
pdist.destroy()
print("THREADS", pdist.process_group_threads())
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DEFAULT (None,)" in out.stdout and "THREADS []" in out.stdout, out.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_destroy_without_a_job_is_a_no_op():
    assert not dist.is_initialized()
    pdist.destroy()
    assert not dist.is_initialized()


def test_sigterm_exits_raises_system_exit_143_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc:
        with sigterm_exits():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass
    assert exc.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


class _Resource:
    pass


def _fail_holding(resource: _Resource) -> None:
    local = resource  # noqa: F841  (what a failed _run's frame keeps: model, engine, optimizer)
    raise ValueError("boom")


def test_release_frames_frees_what_a_failed_frame_held():
    resource = _Resource()
    ref = weakref.ref(resource)
    try:
        _fail_holding(resource)
    except ValueError as err:
        del resource
        assert ref() is not None  # the traceback's frame keeps it
        release_frames(err)
        assert ref() is None
        assert str(err) == "boom" and err.__traceback__ is not None  # the error itself is intact


def test_release_frames_follows_chained_errors():
    resource = _Resource()
    ref = weakref.ref(resource)
    try:
        try:
            _fail_holding(resource)
        except ValueError:
            raise RuntimeError("while handling")
    except RuntimeError as err:
        del resource
        release_frames(err)
        assert ref() is None


# ---- scripts/stress_exit.py (its job runs are tests/distributed/test_exit.py) ----

@pytest.mark.parametrize("returncode, output, problem", [
    (0, "exported Hugging Face model to /x/hf\n", None),
    (-6, "", "exit status -6"),
    (1, "ChildFailedError", "exit status 1"),
    (0, "terminate called without an active exception\n", "output contains 'terminate called'"),
    (0, "Fatal Python error: Aborted\n", "output contains 'Fatal Python error'"),
])
def test_exit_problem_classifies_status_and_abort_text(returncode, output, problem):
    assert stress_exit.exit_problem(returncode, output) == problem


def test_stress_jobs_force_cpu_and_the_interpreters_tools(tmp_path):
    command = stress_exit.job_command("zero3", tmp_path, 2, "cpu", ["trainer.seed=3"])
    assert command[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert {"parallel=zero3", "parallel.device=cpu", f"output_root={tmp_path}", "trainer.seed=3"} <= set(command)
    env = stress_exit.job_env("cpu")
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["DS_ACCELERATOR"] == "cpu"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["TORCH_EXTENSIONS_DIR"] == os.environ.get("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    assert stress_exit.job_env("cuda").get("DS_ACCELERATOR") == os.environ.get("DS_ACCELERATOR")


def test_stress_report_counts_clean_runs_per_strategy():
    results = [{"strategy": "zero3", "run": 1, "returncode": 0, "problem": None, "leak_warning": False, "log": "a"},
               {"strategy": "zero3", "run": 2, "returncode": -6, "problem": "exit status -6", "leak_warning": True,
                "log": "b"},
               {"strategy": "ddp", "run": 1, "returncode": 0, "problem": None, "leak_warning": False, "log": "c"}]
    report = stress_exit.summarize(results, ["zero3", "ddp"])
    assert report["strategies"]["zero3"] == {"runs": 2, "clean": 1, "leak_warnings": 1, "failures": [
        {"run": 2, "returncode": -6, "problem": "exit status -6", "log": "b"}]}
    assert report["strategies"]["ddp"]["clean"] == 1
    assert (report["runs"], report["clean"], report["all_clean"]) == (3, 2, False)


@pytest.mark.parametrize("problem, leak, keep_logs, kept", [
    (None, False, False, False), ("exit status -6", False, False, True), (None, True, False, True),
    (None, False, True, True)])
def test_stress_keeps_the_logs_of_failed_and_leaking_jobs(problem, leak, keep_logs, kept):
    assert stress_exit.keeps_log({"problem": problem, "leak_warning": leak}, keep_logs) is kept


def test_stress_rejects_an_unknown_strategy():
    with pytest.raises(SystemExit):
        stress_exit.parse_args(["--strategies", "zero4"])


def test_exit_if_groups_linger_leaves_with_status_0_when_group_threads_outlive_teardown(tmp_path):
    """A process with a thread named like a gloo worker leaves at once, status 0, output flushed and
    nothing after the call run; without such a thread the call returns."""
    import subprocess
    import sys

    from lmms_engine.parallel.dist import PROCESS_GROUP_THREADS

    script = tmp_path / "linger.py"
    script.write_text(f"""
import ctypes, sys, threading, time
from lmms_engine.train.shutdown import exit_if_groups_linger
exit_if_groups_linger()
print("returned without lingering threads", flush=True)
def worker():
    ctypes.CDLL(None).prctl(15, {sorted(PROCESS_GROUP_THREADS)[0]!r}.encode(), 0, 0, 0)  # PR_SET_NAME
    time.sleep(30)
threading.Thread(target=worker, daemon=True).start()
time.sleep(0.5)
print("before", end="")  # unflushed: exit_if_groups_linger must flush it
exit_if_groups_linger()
print("after")
sys.exit(3)
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "returned without lingering threads\nbefore"


# ---- parallel/deepspeed_release.py ----

class _FakeDeepSpeedEngine:
    """What a ZeRO-3 engine leaves after `destroy()`: forward hooks on its model that close over it
    (its own reference cycle), and the model on ZeRO-3's module-global forward stack."""

    def __init__(self, module: nn.Module):
        from deepspeed.runtime.zero import parameter_offload

        self.module, self.destroyed = module, False
        self.module_forward_pre_hook = module.register_forward_pre_hook(lambda m, a: self.destroyed)
        self.module_forward_post_hook = module.register_forward_hook(lambda m, a, o: self.destroyed)
        parameter_offload.FWD_MODULE_STACK.append(module)

    def destroy(self):
        self.destroyed = True
        if getattr(self, "fail", False):
            raise RuntimeError("destroy failed")


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="the deepspeed extra")
def test_release_engine_leaves_nothing_global_holding_the_engine_or_its_model():
    from deepspeed.runtime.zero import parameter_offload

    stack, saved = parameter_offload.FWD_MODULE_STACK, list(parameter_offload.FWD_MODULE_STACK)
    stack.clear()
    try:
        engine = _FakeDeepSpeedEngine(nn.Sequential(nn.Linear(2, 2)))
        engine_ref, model_ref = weakref.ref(engine), weakref.ref(engine.module)
        engine.destroy()  # DeepSpeed's own destroy alone: the stack still reaches model and engine
        del engine
        gc.collect()
        assert engine_ref() is not None and model_ref() is not None
        release_engine(engine_ref())
        gc.collect()
        assert engine_ref() is None and model_ref() is None
        assert stack == []
    finally:
        stack[:] = saved


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="the deepspeed extra")
def test_release_engine_still_frees_the_model_when_destroy_raises():
    from deepspeed.runtime.zero import parameter_offload

    stack, saved = parameter_offload.FWD_MODULE_STACK, list(parameter_offload.FWD_MODULE_STACK)
    stack.clear()
    try:
        engine = _FakeDeepSpeedEngine(nn.Linear(2, 2))
        engine.fail = True
        with pytest.raises(RuntimeError, match="destroy failed"):
            release_engine(engine)
        assert stack == [] and engine.module_forward_pre_hook is None and not engine.module._forward_hooks
    finally:
        stack[:] = saved
