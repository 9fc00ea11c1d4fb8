"""Does a finished multi-rank job exit cleanly, every time? (issue 21; not part of CI)

Runs the tiny one-step job `torchrun --standalone --nproc_per_node=2 train.py model=tiny data=demo
parallel=S trainer.max_steps=1 ...` N times for each strategy S and counts clean exits: status 0
and no abort text (`terminate called`, `SIGABRT`, `Fatal Python error`, ...) in its output. Each job
has its own --standalone rendezvous (a free port) and output directory, so `--jobs K` run at once.

    uv run python scripts/stress_exit.py --runs 50 --jobs 12           # 4 x 50 = 200 jobs, CPU / gloo, 16-core host
    uv run python scripts/stress_exit.py --strategies zero3 --runs 5 --jobs 1

`--device cpu` (the default) hides CUDA from the jobs, so on a GPU host the strategies still use
gloo on CPU, as on a CPU-only machine. Prints one JSON report (per strategy: runs, clean,
leak_warnings, and each failure's exit status, reason and log file) and exits 1 unless every job
exited cleanly. `leak_warnings` counts jobs that logged a process group outliving teardown (they
left through the os._exit safety net; expected 0). Logs of failed jobs and of jobs with that
warning are kept under --out; those of the others are deleted unless --keep-logs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("zero3", "zero2", "fsdp2", "ddp")
# Text that means a rank died badly even where the launcher's own status would not show it.
ABORT_TEXT = ("terminate called", "SIGABRT", "Signal 6", "Fatal Python error", "core dumped", "Segmentation fault",
              "exitcode  : -")
# A warning of lmms_engine.parallel.dist.destroy: a process group outlived teardown.
LEAK_TEXT = "process-group threads still alive"
JOB_OVERRIDES = ("model=tiny", "data=demo", "trainer.max_steps=1", "data.packing=false", "data.micro_batch_size=2")


def job_command(strategy: str, output_root: Path, nproc: int, device: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(REPO / "train.py"), *JOB_OVERRIDES, f"parallel={strategy}", f"parallel.device={device}",
            f"output_root={output_root}", *extra]


def job_env(device: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true")
    # This interpreter's bin first: DeepSpeed's JIT op build then finds the same ninja every time
    # (a different one rebuilds its CPU comm op, minutes per job).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # One op build per environment: torch's default extension dir is shared by every venv of the
    # user, and a build from another venv's DeepSpeed sources (other paths) replaces this one's.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # torch sees no GPU: gloo on CPU
        env["DS_ACCELERATOR"] = "cpu"  # and DeepSpeed does not pick CUDA by itself
    return env


def exit_problem(returncode: int, output: str) -> str | None:
    """Why a job's exit is not clean (None when it is): its status, or the abort text it printed."""
    if returncode != 0:
        return f"exit status {returncode}"
    for text in ABORT_TEXT:
        if text in output:
            return f"output contains {text!r}"
    return None


def keeps_log(result: dict, keep_logs: bool) -> bool:
    """A job's directory stays when it failed, logged the lingering-threads warning, or --keep-logs."""
    return keep_logs or result["problem"] is not None or result["leak_warning"]


def run_job(strategy: str, index: int, out: Path, args) -> dict:
    job_dir = out / strategy / str(index)
    job_dir.mkdir(parents=True, exist_ok=True)
    command = job_command(strategy, job_dir / "outputs", args.nproc, args.device, args.overrides)
    try:
        proc = subprocess.run(command, cwd=job_dir, env=job_env(args.device), capture_output=True, text=True,
                              timeout=args.timeout)
        returncode, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        returncode, output = 124, f"timed out after {args.timeout}s\n{err.stdout or ''}{err.stderr or ''}"
    log = job_dir / "log.txt"
    log.write_text(output)
    result = {"strategy": strategy, "run": index, "returncode": returncode, "problem": exit_problem(returncode, output),
              "leak_warning": LEAK_TEXT in output, "log": str(log)}
    if not keeps_log(result, args.keep_logs):
        shutil.rmtree(job_dir, ignore_errors=True)
    leak = f" ({LEAK_TEXT})" if result["leak_warning"] else ""
    print(f"{strategy} run {index}: {result['problem'] or 'clean'}{leak}", file=sys.stderr, flush=True)
    return result


def summarize(results: list[dict], strategies: list[str]) -> dict:
    report = {}
    for strategy in strategies:
        mine = [r for r in results if r["strategy"] == strategy]
        report[strategy] = {
            "runs": len(mine),
            "clean": sum(r["problem"] is None for r in mine),
            "leak_warnings": sum(r["leak_warning"] for r in mine),
            "failures": [{k: r[k] for k in ("run", "returncode", "problem", "log")} for r in mine if r["problem"]],
        }
    total = sum(v["runs"] for v in report.values())
    clean = sum(v["clean"] for v in report.values())
    return {"strategies": report, "runs": total, "clean": clean, "all_clean": clean == total}


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated parallel= choices")
    parser.add_argument("--runs", type=int, default=50, help="jobs per strategy")
    parser.add_argument("--jobs", type=int, default=1, help="jobs run at once (each uses --nproc processes)")
    parser.add_argument("--nproc", type=int, default=2, help="ranks per job")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu: gloo, CUDA hidden")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per job")
    parser.add_argument("--out", type=Path, default=None, help="job directories (default: a new temp dir)")
    parser.add_argument("--keep-logs", action="store_true", help="keep clean jobs' directories too")
    parser.add_argument("overrides", nargs="*", help="more train.py overrides for every job")
    args = parser.parse_args(argv)
    args.strategies = [s for s in args.strategies.split(",") if s]
    unknown = sorted(set(args.strategies) - set(STRATEGIES) - {"zero1", "single"})
    if unknown or args.runs < 1 or args.jobs < 1:
        parser.error(f"--strategies {unknown or ''} not a parallel= choice, or --runs / --jobs below 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="stress_exit_"))
    plan = [(strategy, i) for i in range(1, args.runs + 1) for strategy in args.strategies]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda job: run_job(*job, out, args), plan))
    report = summarize(results, args.strategies)
    report["out"] = str(out)
    print(json.dumps(report, indent=2))
    return 0 if report["all_clean"] else 1


if __name__ == "__main__":
    sys.exit(main())
