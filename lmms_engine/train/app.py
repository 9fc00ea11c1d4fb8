"""Hydra entry point: compose -> validate -> build each component -> run the loop."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from lmms_engine.checkpoint.export import export_adapter, export_hf
from lmms_engine.checkpoint.manager import check_writable, latest_checkpoint, load_checkpoint
from lmms_engine.config import RunConfig, validate
from lmms_engine.data.dataset import build_sft_dataset
from lmms_engine.logging.data_notes import warn_about_data
from lmms_engine.logging.report import write_run_report
from lmms_engine.logging.summary import run_summary
from lmms_engine.models.flops import peak_flops
from lmms_engine.parallel import dist as pdist
from lmms_engine.train.data_iter import make_step_batches
from lmms_engine.train.evaluate import evaluate
from lmms_engine.train.lora import adapter_params, adapter_state, apply_lora, lora_step_flops, merged_state
from lmms_engine.train.loop import LoopPolicy, StepContext, train
from lmms_engine.train.module import CausalLMWithLoss
from lmms_engine.train.optim import build_adamw, freeze_components
from lmms_engine.train.prefetch import make_collator
from lmms_engine.train.resolvers import register_resolvers
from lmms_engine.train.resume_args import record_resume
from lmms_engine.train.run_length import check_run_length, resolve_run_length
from lmms_engine.train.schedule import lr_at
from lmms_engine.train.shutdown import exit_if_groups_linger, release_frames, sigterm_exits
from lmms_engine.train.state import restore_rng, seed_everything

log = logging.getLogger("lmms_engine.train")

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")

register_resolvers()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.nproc_per_node > 1 and not pdist.under_launcher():
        relaunch_under_torchrun(cfg.nproc_per_node, HydraConfig.get().overrides.task, run_dir)
        return
    pdist.export_submitit_env()
    if pdist.env_rank() != 0:  # one console and train.log voice: rank 0; others report problems only
        logging.getLogger().setLevel(logging.WARNING)
    try:
        run(cfg, run_dir, overrides=list(HydraConfig.get().overrides.task))
    except ValueError as err:  # a user mistake (config, data): its message says what and where
        log.error("%s", err)
        sys.exit(1)
    if pdist.under_launcher() and HydraConfig.get().mode == RunMode.RUN:  # one job per process: done
        exit_if_groups_linger()


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] = ()) -> Path:
    """Train as `cfg` says, writing into `run_dir` (`overrides`: the command line's, recorded on resume).
    Returns the run directory."""
    rc = validate(cfg)
    check_run_length(rc)
    check_writable(run_dir / "checkpoints", pdist.env_rank())  # before any work, not at the first save
    strategy = instantiate(rc.groups["parallel"])
    try:
        with sigterm_exits():  # outside the loop (which checkpoints on it) SIGTERM ends the run through here
            strategy.setup()
            _run(cfg, rc, strategy, run_dir, list(overrides))
    except BaseException as err:
        release_frames(err)  # the traceback would keep the model and engine, so their process groups, alive
        raise
    finally:
        strategy.teardown()  # frees the process groups and joins their threads before interpreter exit
    return run_dir


def _run(cfg: DictConfig, rc: RunConfig, strategy, run_dir: Path, overrides: list[str]) -> None:
    seed_everything(rc.trainer.seed)
    patcher = instantiate(rc.groups["kernels"])
    patcher.check(strategy.device)  # a kernel this machine cannot run: one line, before the model is built
    bundle = _build_model(rc, strategy)
    dataset = build_sft_dataset(bundle.tokenizer, instantiate(rc.groups["data"]), seed=rc.trainer.seed,
                                **bundle.data_inputs())
    if strategy.is_main:
        warn_about_data(dataset.stats, rc.groups["data"].get("packing_length"))
    rc = resolve_run_length(rc, dataset, strategy.data_world_size)  # trainer.epochs / optim.warmup_ratio as steps
    patcher.apply(bundle.model, strategy.device, padding_free=dataset.packing or patcher.use_rmpad,
                  encoders=bundle.encoders, decoder_path=bundle.decoder_path, compiled=strategy.compile,
                  sequence_parallel=strategy.sequence_parallel)
    freeze_components(bundle.model, rc.optim.freeze, bundle.components())
    lora = _apply_lora(rc, bundle, strategy)
    summary = run_summary(dataset.stats, bundle.model)  # before wrapping: whole-model counts
    module = CausalLMWithLoss(bundle.model, patcher.loss_fn(), bundle.hidden_states)
    strategy.shard_sequence(module, bundle.decoder_path)  # parallel.sp_degree > 1: this rank's slice of each pack
    module = strategy.prepare(module, bundle.shard_units, bundle.encoder_units)
    optimizer = strategy.build_optimizer(
        module, functools.partial(_make_optimizer, optim=rc.optim, components=bundle.components()))
    start_step, position, bad_steps = _maybe_resume(rc, run_dir, module, optimizer, strategy, overrides)
    if strategy.is_main and not (start_step and (run_dir / "data_stats.json").exists()):
        _write_json(run_dir / "data_stats.json", dataset.stats)  # a run resumed in place keeps its own
    step_source = make_step_batches(dataset, rc.trainer.grad_accum, strategy.data_rank, strategy.data_world_size, position)
    collator = make_collator(dataset.collate, step_source.plan(), _data_workers(rc, strategy.device), strategy.device)
    ctx = StepContext(
        module=module, optimizer=optimizer, strategy=strategy, collate=collator.get,
        attention_kwargs=patcher.attention_kwargs, input_keys=bundle.input_keys,
        flops_fn=bundle.step_flops if lora is None else lora_step_flops(
            bundle.step_flops, bundle.model.config.get_text_config(), adapter_params(bundle.decoder())),
        max_grad_norm=rc.trainer.max_grad_norm if rc.trainer.max_grad_norm > 0 else float("inf"),
        unpad=patcher.use_rmpad and not dataset.packing,
        pack_multiple=strategy.sequence_shards * patcher.token_multiple(),
    )
    policy = LoopPolicy(
        step_source=step_source, lr_at=functools.partial(_lr, rc=rc),
        sinks=_build_sinks(cfg, rc, run_dir, start_step, strategy.is_main, summary), checkpoint_root=run_dir / "checkpoints",
        max_steps=rc.trainer.max_steps, save_every=rc.trainer.save_every, save_final=rc.trainer.save_final,
        max_bad_steps=rc.trainer.max_bad_steps, keep_last=rc.trainer.keep_last, bad_steps=bad_steps,
        peak_flops=_device_peak_flops(strategy.device), eval_every=rc.trainer.eval_every,
        evaluate=functools.partial(evaluate, data=dataset.eval_data) if dataset.eval_data is not None else None,
    )
    try:
        finished = train(ctx, policy, start_step)
    finally:
        collator.close()
        policy.sinks.close()
    if finished and rc.trainer.export_hf:  # stopped by a signal: the checkpoint is the output, no export
        _export(rc, module, bundle, lora, run_dir / "hf", strategy)
    if rc.trainer.report and strategy.is_main:  # curves of the steps so far, also when stopped by a signal
        write_run_report(run_dir)


def _apply_lora(rc: RunConfig, bundle, strategy):
    """optim.lora: peft adapters in the model, only they trained and checkpointed; None without."""
    if rc.optim.lora is None:
        return None
    strategy.exclude_frozen_from_checkpoints()
    return apply_lora(bundle.model, rc.optim.lora, bundle.components(), seed=rc.trainer.seed,
                      frozen_dtype=strategy.frozen_dtype())


def _export(rc: RunConfig, module, bundle, lora, out_dir: Path, strategy) -> None:
    if lora is None:
        export_hf(module, bundle.artifacts(), out_dir, strategy)
    elif rc.trainer.export_adapter:
        export_adapter(module, lora, adapter_state, out_dir, strategy)
    else:  # merged: loads with plain transformers
        export_hf(module, bundle.artifacts(), out_dir, strategy,
                  transform=functools.partial(merged_state, scaling=rc.optim.lora.alpha / rc.optim.lora.rank))


def relaunch_under_torchrun(nproc: int, overrides: list[str], run_dir: Path) -> None:
    """This job (one of a multirun sweep, say) as its own `torchrun --standalone`, in the same run dir."""
    script = Path(__file__).resolve().parents[2] / "train.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script),
           *overrides, f"hydra.run.dir='{run_dir}'"]  # quoted: sweep dirs hold '=' and ','
    log.info("launching %d processes: %s", nproc, " ".join(cmd))
    result = subprocess.run(cmd, env=torchrun_env(nproc, os.environ))
    if result.returncode != 0:
        raise SystemExit(f"torchrun job in {run_dir} failed with exit code {result.returncode}")


def torchrun_env(nproc: int, environ) -> dict[str, str]:
    """The environment for torchrun's processes: OMP_NUM_THREADS set (torchrun would otherwise print its
    banner and set 1) to this machine's CPUs shared among them, said once; a value given is kept."""
    env = dict(environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // nproc))
        log.info("OMP_NUM_THREADS=%s for each of the %d processes (the CPUs shared among them; set "
                 "OMP_NUM_THREADS to choose)", env["OMP_NUM_THREADS"], nproc)
    return env


def instantiate(node, *args, **kwargs):
    """hydra.utils.instantiate, re-raising a user mistake (ValueError) as itself, not wrapped."""
    try:
        return hydra_instantiate(node, *args, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ValueError):
            raise err.__cause__ from None
        raise


def _build_model(rc: RunConfig, strategy):
    if not strategy.build_on_meta:
        # ZeRO-3: inside deepspeed.zero.Init, so every layer is partitioned as it is made.
        with strategy.model_init_context():
            return instantiate(rc.groups["model"], _convert_="all")
    # Structure only: the weights come from rank 0 after sharding (see parallel/fsdp2.py).
    with torch.device("meta"):
        return instantiate(rc.groups["model"], _convert_="all", structure_only=True)


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _build_sinks(cfg: DictConfig, rc: RunConfig, run_dir: Path, start_step: int, is_main: bool, summary: dict):
    # _partial_: the resolved run config holds _target_ entries that instantiate must not build.
    build = instantiate(rc.groups["logger"], _partial_=True)
    sinks = build(run_dir=run_dir, run_config=OmegaConf.to_container(cfg, resolve=True), max_steps=rc.trainer.max_steps,
                  start_step=start_step, is_main=is_main)
    sinks.summary(summary)
    return sinks


def _make_optimizer(module, optim, components):
    return build_adamw(module, lr=optim.lr, weight_decay=optim.weight_decay, betas=optim.betas, eps=optim.eps,
                       components=components, component_lr=optim.component_lr)


def _data_workers(rc: RunConfig, device: torch.device) -> int:
    if rc.trainer.data_workers is not None:
        return rc.trainer.data_workers
    return 4 if device.type == "cuda" else 0


def _lr(step: int, rc: RunConfig) -> float:
    o = rc.optim
    return lr_at(step, lr=o.lr, schedule=o.schedule, warmup_steps=o.warmup_steps, max_steps=rc.trainer.max_steps,
                 min_lr_ratio=o.min_lr_ratio, decay_ratio=o.decay_ratio)


def _maybe_resume(rc: RunConfig, run_dir: Path, module, optimizer, strategy,
                  overrides: list[str]) -> tuple[int, dict | None, int]:
    """(step, data position, bad steps so far) of the checkpoint to resume from; (0, None, 0) when fresh.
    Nothing is written into `run_dir` before the checkpoint has loaded into this run's model."""
    path = _resume_path(rc.trainer.resume, run_dir)
    if path is None:
        return 0, None, 0
    state = load_checkpoint(path, module, optimizer, strategy)
    restore_rng(state["rng"])
    log.info("resumed from %s at step %d", path, state["step"])
    if strategy.is_main:
        record_resume(run_dir, path, state["step"], overrides)
    return state["step"], state["data"], state.get("bad_steps", 0)


def _resume_path(resume: str | None, run_dir: Path) -> Path | None:
    """null: start fresh; auto: the latest complete checkpoint of this run dir (fresh if none);
    a checkpoint directory; or another run's directory (its latest complete checkpoint)."""
    if resume is None:
        return None
    if resume == "auto":
        latest = latest_checkpoint(run_dir / "checkpoints")
        if latest is None:
            log.info("trainer.resume=auto: no complete checkpoint in %s; training starts from scratch", run_dir / "checkpoints")
        return latest
    path = Path(resume)
    if (path / "checkpoints").is_dir():
        path = latest_checkpoint(path / "checkpoints") or path / "checkpoints"
    if not path.is_dir():
        raise ValueError(f"trainer.resume={resume!r}: no such checkpoint or run directory")
    return path


def _device_peak_flops(device) -> float | None:
    """The device's peak FLOP/s, the denominator of MFU; None, said once in the log, where there is none."""
    if device.type != "cuda":
        log.info("MFU needs a CUDA device's peak FLOP/s: not shown on %s (metrics.jsonl: mfu null)", device.type)
        return None
    name = torch.cuda.get_device_name(device)
    peak = peak_flops(name)
    if peak is None:
        log.info("no peak FLOP/s known for %s (models/flops.py): MFU not shown (metrics.jsonl: mfu null)", name)
    return peak
