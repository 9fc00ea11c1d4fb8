"""Kill a training run at random moments, resume it, and compare it with an uninterrupted run.

Two ways to start a training attempt:
- `SubprocessLauncher`: the real command, `python train.py ...` (or `python -m torch.distributed.run
  --nproc_per_node=N train.py ...`), in its own process group; a kill SIGKILLs the whole group.
- `ForkLauncher`: a helper process (this file run as a script) imports the training code once, then
  forks one child per rank for each attempt (with the RANK / WORLD_SIZE / MASTER_* variables torchrun
  would set) and each child runs the same Hydra entry point, `lmms_engine.train.app.main`. A kill
  SIGKILLs every child at once. This skips the ~10 s of imports per attempt, so twenty kills fit in
  a test. What is killed is the same: the processes that train and write checkpoints.

`kill_loop` launches attempts until one finishes: before each of the first `kills` attempts it draws
(from a seeded random generator, so a failure reproduces) when to SIGKILL it:
- "save": right when this attempt's first (or second) `step_<N>.tmp/` checkpoint folder appears: half
  of them at once (`in_write`: certainly inside the write), the others after a random delay of up to
  `save_delay_s` (inside the checkpoint write, its seal, or the pruning after it);
- "step": a random moment during step resumed+k (k = 1..3), from the metrics.jsonl the attempt writes;
- "startup": a random moment before the first step (imports, model build, checkpoint load).
Every attempt after the first resumes with trainer.resume=auto in the same run directory.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.003
# One thread per process: reproducible CPU kernels and no oversubscription of small CI machines.
# A wide console: rich does not wrap the log lines (messages with long paths) that tests look for.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "1000"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SubprocessLauncher:
    """`python train.py <overrides>` (nproc > 1: under torchrun), killed as a process group."""

    def __init__(self, nproc: int, env: dict, log_dir: Path):
        self.nproc, self.env, self.log_dir = nproc, env, log_dir
        self._proc, self._log, self._killed = None, None, []

    def start(self, overrides: list[str], attempt: int, rlimit_fsize: int | None = None) -> None:
        """rlimit_fsize: the largest file (bytes) the run may write (a real EFBIG beyond, like a full disk)."""
        if self.nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc}",
                   "train.py", *overrides]
        else:
            cmd = [sys.executable, "train.py", *overrides]
        self._log = open(self.log_dir / f"attempt{attempt}.log", "w")
        self._proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True, preexec_fn=_file_size_limit(rlimit_fsize))

    def poll(self) -> int | None:
        return self._proc.poll()

    def kill(self) -> None:
        """SIGKILL the command and every process under it: torchrun starts each worker in a session
        of its own, so killing torchrun's process group alone would leave the ranks training."""
        self._killed = _kill_tree(self._proc.pid)

    def wait(self, timeout: float) -> int:
        code = self._proc.wait(timeout)
        self._log.close()
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in self._killed):  # every rank is gone before the next attempt
            assert time.monotonic() < deadline, f"processes {self._killed} outlived the kill"
            time.sleep(0.01)
        self._killed = []
        return code

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            _kill_tree(self._proc.pid)
            self._proc.wait()


def _file_size_limit(limit: int | None):
    if limit is None:
        return None

    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


class ForkLauncher:
    """Attempts forked from a helper process that has imported the training code (see module doc)."""

    def __init__(self, nproc: int, env: dict, log_dir: Path):
        self.nproc, self.log_dir = nproc, log_dir
        self._helper = subprocess.Popen([sys.executable, __file__, "serve"], cwd=REPO, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._read() == {"ready": True}
        self._pids, self._codes = [], None

    def start(self, overrides: list[str], attempt: int, rlimit_fsize: dict[int, int] | None = None,
              inject: dict | None = None) -> None:
        """rlimit_fsize: rank -> largest file (bytes) it may write (a real EFBIG beyond, like a full
        disk); inject: {"fn": "module:function", **kwargs}, called in each rank as fn(rank, **kwargs)
        before training (test-only fault injection, e.g. poison_loss below)."""
        request = {"argv": overrides, "nproc": self.nproc, "port": free_port(),
                   "log": str(self.log_dir / f"attempt{attempt}.log"),
                   "rlimit_fsize": {str(k): v for k, v in (rlimit_fsize or {}).items()}, "inject": inject}
        self._helper.stdin.write(json.dumps(request) + "\n")
        self._helper.stdin.flush()
        self._pids, self._codes = self._read()["pids"], None

    @property
    def pids(self) -> list[int]:
        return list(self._pids)

    @property
    def exit_codes(self) -> list[int] | None:
        return self._codes

    def logs(self, attempt: int) -> list[str]:
        """Each rank's console output of attempt `attempt`."""
        base = self.log_dir / f"attempt{attempt}.log"
        return [Path(f"{base}.rank{r}" if r else base).read_text() for r in range(self.nproc)]

    def poll(self) -> int | None:
        if self._codes is None and not any(_alive(pid) for pid in self._pids):
            self._codes = self._read()["exit"]
        return None if self._codes is None else max(self._codes, key=abs)

    def kill(self) -> None:
        for pid in self._pids:  # each rank leads its own process group (with any workers it started)
            _killpg(pid)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"attempt still running after {timeout} s")
            time.sleep(0.01)
        return code

    def close(self) -> None:
        for pid in self._pids:
            if _alive(pid):
                _killpg(pid)
        self._helper.stdin.close()
        self._helper.wait(timeout=60)

    def _read(self) -> dict:
        line = self._helper.stdout.readline()
        if not line:
            raise RuntimeError(f"fork helper exited with status {self._helper.wait()}")
        return json.loads(line)


def _kill_tree(pid: int) -> list[int]:
    """SIGKILL `pid` and all its descendants (found first, then killed, so none is re-parented
    away); returns their pids."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return tree


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as ended: the helper has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # gone before the open (FileNotFoundError) or between open and read (ProcessLookupError)
        return False


@dataclass
class KillRecord:
    attempt: int
    mode: str
    resumed_from: int  # step of the checkpoint the attempt resumed from (0: fresh)
    at_s: float  # seconds after launch
    saving: bool  # a step_<N>.tmp folder of this attempt existed at the kill
    last_step: int  # last step the attempt logged before it was killed
    in_write: bool = False  # planned at the moment the checkpoint folder appeared (no delay)


@dataclass
class KillReport:
    kills: list[KillRecord] = field(default_factory=list)
    attempts: int = 0
    wall_s: float = 0.0  # launch of the first attempt to the end of the last
    finished_early: bool = False  # the run finished before every planned kill happened

    def summary(self) -> dict:
        modes = {m: sum(k.mode == m for k in self.kills) for m in ("save", "step", "startup")}
        return {"kills": len(self.kills), "attempts": self.attempts, "by_mode": modes,
                "during_checkpoint_write": sum(k.saving for k in self.kills),
                "planned_in_write": sum(k.in_write for k in self.kills)}


def kill_loop(launcher, run_dir: Path, overrides: list[str], kills: int, seed: int, startup_s: float,
              step_s: float, save_delay_s: float, attempt_timeout_s: float = 300) -> KillReport:
    """Run to the end, SIGKILLing the first `kills` attempts (see the module doc). Returns what happened."""
    rng, report, started = random.Random(seed), KillReport(), time.monotonic()
    ckpt_root = run_dir / "checkpoints"
    while True:
        resumed = _latest_step(ckpt_root)
        plan = _draw(rng, resumed, startup_s, step_s, save_delay_s) if len(report.kills) < kills else None
        attempt = report.attempts
        launcher.start([*overrides, f"hydra.run.dir={run_dir}", "trainer.resume=auto"], attempt)
        report.attempts += 1
        launched_ns, launched = time.time_ns(), time.monotonic()
        killed = False
        while plan is not None and launcher.poll() is None:
            if _due(plan, run_dir, launched_ns, launched):
                saving = _fresh_tmp(ckpt_root, launched_ns) is not None
                launcher.kill()
                report.kills.append(KillRecord(attempt, plan["mode"], resumed, time.monotonic() - launched, saving,
                                               _last_logged_step(run_dir / "metrics.jsonl", launched_ns),
                                               plan.get("in_write", False)))
                killed = True
                break
            time.sleep(POLL_S)
        code = launcher.wait(attempt_timeout_s)
        if killed:
            continue
        if code != 0:
            log = (launcher.log_dir / f"attempt{attempt}.log").read_text()[-6000:]
            raise AssertionError(f"attempt {attempt} (resumed from step {resumed}) exited {code}:\n{log}")
        report.finished_early = len(report.kills) < kills
        report.wall_s = time.monotonic() - started
        return report


def _draw(rng: random.Random, resumed: int, startup_s: float, step_s: float, save_delay_s: float) -> dict:
    mode = rng.choices(["save", "step", "startup"], weights=[0.4, 0.45, 0.15])[0]
    plan = {"mode": mode, "delay": 0.0, "after_step": None}
    if mode == "save":
        plan["nth_save"] = rng.randint(1, 2)  # inside this attempt's first or second checkpoint write
        plan["in_write"] = rng.random() < 0.5
        plan["delay"] = 0.0 if plan["in_write"] else rng.uniform(0, save_delay_s)
    elif mode == "step":
        plan["after_step"] = resumed + rng.randint(1, 3) - 1  # die during step after_step + 1
        plan["delay"] = rng.uniform(0, step_s)
    else:
        plan["delay"] = rng.uniform(0, startup_s)
    return plan


def _due(plan: dict, run_dir: Path, launched_ns: int, launched: float) -> bool:
    """Whether the planned moment has come (its trigger seen, then its delay spent)."""
    if "triggered" not in plan:
        if plan["mode"] == "save":
            fresh = _fresh_tmp(run_dir / "checkpoints", launched_ns)
            if fresh is not None:
                plan.setdefault("saves_seen", set()).add(fresh.name)
            hit = len(plan.get("saves_seen", ())) >= plan["nth_save"]
        elif plan["mode"] == "step":
            hit = _last_logged_step(run_dir / "metrics.jsonl", launched_ns) >= plan["after_step"]
        else:
            hit = True
        if hit:
            plan["triggered"] = launched if plan["mode"] == "startup" else time.monotonic()
    return "triggered" in plan and time.monotonic() - plan["triggered"] >= plan["delay"]


def _fresh_tmp(root: Path, since_ns: int) -> Path | None:
    """A step_<N>.tmp folder made by the current attempt."""
    try:
        for path in root.iterdir():
            if path.name.endswith(".tmp") and path.stat().st_mtime_ns >= since_ns:
                return path
    except FileNotFoundError:
        pass
    return None


def _last_logged_step(metrics: Path, since_ns: int) -> int:
    """The last step in metrics.jsonl once the current attempt has (re)written it, else -1."""
    try:
        if metrics.stat().st_mtime_ns < since_ns:
            return -1
        lines = metrics.read_bytes().splitlines()
        return json.loads(lines[-1])["step"] if lines else -1
    except (FileNotFoundError, ValueError, KeyError, IndexError):
        return -1


def _latest_step(root: Path) -> int:
    from lmms_engine.checkpoint.manager import latest_checkpoint

    path = latest_checkpoint(root)
    return int(path.name.split("_")[1]) if path else 0


def run_once(launcher, overrides: list[str], attempt: int, timeout_s: float = 300, **start) -> int:
    """One attempt to its end; returns its exit status (the worst rank's)."""
    launcher.start(overrides, attempt, **start)
    return launcher.wait(timeout_s)


def poison_loss(rank: int, ranks: list[int], calls: list[int]) -> None:
    """Test-only fault injection, in a training process before it starts: the loss module's forward
    call k (1-based; step k with grad_accum=1) returns NaN on the ranks listed."""
    from lmms_engine.train.module import CausalLMWithLoss

    if rank not in ranks:
        return
    forward, count = CausalLMWithLoss.forward, [0]

    def poisoned(self, *args, **kwargs):
        count[0] += 1
        loss = forward(self, *args, **kwargs)
        return loss * float("nan") if count[0] in calls else loss

    CausalLMWithLoss.forward = poisoned


def forbid_unpickling_loads(rank: int) -> None:
    """Test-only: any torch.load(weights_only=False) in this training process fails loudly."""
    load = torch.load

    def checked(*args, **kwargs):
        if kwargs.get("weights_only") is False:
            raise AssertionError(f"torch.load(weights_only=False) of {args[0] if args else kwargs.get('f')}")
        return load(*args, **kwargs)

    torch.load = checked


# ---- the run under test, its reference and the comparison ----

@dataclass
class RunSpec:
    """The overrides of the run that is killed (and of its reference), and its checkpoint cadence."""

    overrides: list[str]
    steps: int
    save_every: int
    keep_last: int

    def args(self, cache: Path) -> list[str]:
        return [*self.overrides, f"trainer.max_steps={self.steps}", f"trainer.save_every={self.save_every}",
                f"trainer.keep_last={self.keep_last}", f"data.cache_dir={cache}"]


def reference_run(launcher, spec: RunSpec, run_dir: Path) -> dict:
    """An uninterrupted run; returns the timings kill moments are drawn from."""
    report = kill_loop(launcher, run_dir, spec.args(run_dir.parent / "cache"), kills=0, seed=0, startup_s=0,
                       step_s=0, save_delay_s=0)
    rows = metrics_rows(run_dir)
    step_s = sorted(r["step_s"] for r in rows)[len(rows) // 2]
    return {"startup_s": max(report.wall_s - rows[-1]["elapsed_s"], 0.5), "step_s": step_s,
            "save_delay_s": 2.5 * step_s}


def kill_and_compare(launcher, spec: RunSpec, reference: tuple[Path, dict], tmp_path: Path, kills: int, seed: int,
                     name: str, **timing_overrides) -> KillReport:
    """Kill a run `kills` times, let it finish, check it bitwise against `reference`; write a summary."""
    reference_dir, timings = reference
    run_dir = tmp_path / "killed"
    # A token cache of its own: the first attempt may be killed while it tokenizes.
    report = kill_loop(launcher, run_dir, spec.args(tmp_path / "cache"), kills=kills, seed=seed,
                       **{**timings, **timing_overrides})
    assert len(report.kills) == kills and not report.finished_early, report.summary()
    counts = check_same_as_reference(spec, run_dir, reference_dir, tmp_path)
    summary = {**report.summary(), **counts, "wall_s": round(report.wall_s, 1)}
    print(f"\n{name}: {json.dumps(summary)}")
    (tmp_path / f"{name}.json").write_text(json.dumps({**summary, "kills_detail": [vars(k) for k in report.kills]},
                                                      indent=1))
    return report


def check_same_as_reference(spec: RunSpec, run_dir: Path, reference_dir: Path, tmp_path: Path) -> dict:
    """Bitwise comparison of the final checkpoint, the export and the metrics. Returns tensor counts."""
    from lmms_engine.checkpoint.manager import COMPLETE_MARKER

    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    first_kept = spec.steps - (spec.keep_last - 1) * spec.save_every
    expected = sorted(f"step_{s}" for s in range(first_kept, spec.steps + 1, spec.save_every))
    assert names == expected, f"keep_last={spec.keep_last} complete checkpoints and no leftovers, got {names}"
    assert all((run_dir / "checkpoints" / n / COMPLETE_MARKER).is_file() for n in names)
    final = f"checkpoints/step_{spec.steps}"
    (tmp_path / "got").mkdir()
    (tmp_path / "want").mkdir()
    checkpoint = assert_bitwise_equal(checkpoint_tensors(run_dir / final, tmp_path / "got"),
                                      checkpoint_tensors(reference_dir / final, tmp_path / "want"), "final checkpoint")
    exported = assert_bitwise_equal(exported_tensors(run_dir), exported_tensors(reference_dir), "hf export")
    assert_same_metrics(run_dir, reference_dir)
    return {"checkpoint_tensors": checkpoint, "exported_tensors": exported}


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


DETERMINISTIC_KEYS = ("step", "loss", "lr", "grad_norm", "tokens", "label_tokens", "skipped", "bad_steps")


def assert_same_metrics(got_dir: Path, reference_dir: Path) -> None:
    got, want = metrics_rows(got_dir), metrics_rows(reference_dir)
    assert [r["step"] for r in got] == [r["step"] for r in want], "each step once, in order"
    for g, w in zip(got, want):
        assert {k: g.get(k) for k in DETERMINISTIC_KEYS} == {k: w.get(k) for k in DETERMINISTIC_KEYS}, g["step"]


def checkpoint_tensors(path: Path, tmp: Path) -> dict:
    """Every tensor of a checkpoint (model, optimizer, each rank's train state), flattened by name."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    flat = {}
    dcp_to_torch_save(path, tmp / "dcp.pt")
    _flatten(torch.load(tmp / "dcp.pt", weights_only=True), "", flat)
    for state in sorted(path.glob("train_state_rank*.pt")):
        _flatten(torch.load(state, weights_only=True), state.stem + ".", flat)
    return flat


def _flatten(value, prefix: str, out: dict) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}{key}.", out)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}{i}.", out)
    else:
        out[prefix.rstrip(".")] = value


def assert_bitwise_equal(got: dict, want: dict, what: str) -> int:
    """Same names; every tensor torch.equal (same dtype, shape and bits), other values ==. Returns the tensor count."""
    assert sorted(got) == sorted(want), f"{what}: different entries"
    tensors = 0
    for name, value in want.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == got[name].dtype and torch.equal(got[name], value), f"{what}: {name} differs"
            tensors += 1
        else:
            assert got[name] == value, f"{what}: {name} = {got[name]!r}, expected {value!r}"
    return tensors


def exported_tensors(run_dir: Path) -> dict:
    return load_file(run_dir / "hf" / "model.safetensors")


# ---- the fork helper (python tests/fault_harness.py serve) ----

def _serve() -> None:
    """Read one JSON request per line; fork its ranks; answer {"pids"}, then {"exit"} when they end."""
    import lmms_engine.train.app  # noqa: F401  (the point: imported once, before any fork)

    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pids = [_fork_rank(request, rank) for rank in range(request["nproc"])]
        out.write(json.dumps({"pids": pids}) + "\n")
        out.flush()
        codes = []
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            codes.append(os.waitstatus_to_exitcode(status))
        out.write(json.dumps({"exit": codes}) + "\n")
        out.flush()


def _fork_rank(request: dict, rank: int) -> int:
    pid = os.fork()
    if pid:
        try:
            os.setpgid(pid, pid)  # also set here, so a kill right after the fork finds the group
        except OSError:
            pass  # the child has already set it (or exec'd / exited)
        return pid
    code = 1
    try:
        os.setpgid(0, 0)
        log = os.open(request["log"] + (f".rank{rank}" if rank else ""), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        if request["nproc"] > 1:
            os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(request["nproc"]),
                              LOCAL_WORLD_SIZE=str(request["nproc"]), MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(request["port"]))
        limit = request["rlimit_fsize"].get(str(rank))
        if limit is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes get EFBIG
        if request["inject"]:
            import importlib

            inject = dict(request["inject"])
            module, _, name = inject.pop("fn").partition(":")
            getattr(importlib.import_module(module), name)(rank, **inject)
        sys.argv = ["train.py", *request["argv"]]
        from lmms_engine.train.app import main

        main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    assert sys.argv[1:] == ["serve"], "usage: python tests/fault_harness.py serve"
    sys.path.insert(0, str(REPO))
    _serve()
