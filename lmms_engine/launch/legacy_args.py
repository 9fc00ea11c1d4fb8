"""`trainer_args` of the original engine's config (Hugging Face TrainingArguments names plus its own
switches) -> trainer / optim / parallel / logger overrides. Part of launch/legacy.py's translation:
`out` is its Collector (pick / set / warn / error).

Keys that change the training and are absent take transformers' TrainingArguments defaults (lr 5e-5,
linear schedule, betas 0.9 / 0.999, seed 42, 3 epochs, ...), as the original engine did, so the
translated run is the run the original would have made.
"""

from __future__ import annotations

HF_DEFAULTS = {
    "learning_rate": 5e-5, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8,
    "max_grad_norm": 1.0, "lr_scheduler_type": "linear", "warmup_ratio": 0.0, "warmup_steps": 0, "seed": 42,
    "num_train_epochs": 3, "max_steps": -1, "gradient_accumulation_steps": 1, "per_device_train_batch_size": 1,
    "save_steps": 500, "logging_steps": 500,
}
SIMPLE = {
    "learning_rate": "optim.lr", "weight_decay": "optim.weight_decay", "adam_epsilon": "optim.eps",
    "max_grad_norm": "trainer.max_grad_norm", "seed": "trainer.seed", "save_steps": "trainer.save_every",
    "save_total_limit": "trainer.keep_last", "logging_steps": "trainer.log_every",
    "dataloader_num_workers": "trainer.data_workers", "gradient_checkpointing": "parallel.activation_checkpointing",
    "output_dir": "output_root",
}
# Translated by the functions below.
SPECIAL = {"adam_beta1", "adam_beta2", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
           "max_steps", "warmup_steps", "warmup_ratio", "lr_scheduler_type", "lr_scheduler_kwargs", "bf16", "fp16",
           "report_to", "run_name", "freeze_modules", "save_strategy", "resume_from_checkpoint", "eval_strategy",
           "evaluation_strategy", "group_by_length", "optim", "ddp_find_unused_parameters", "torch_compile",
           "ema_enabled", "use_muon", "sp_ulysses_degree"}
# Read by legacy.py's strategy and kernel translation.
HANDLED_ELSEWHERE = {"fsdp2", "fsdp_config", "deepspeed", "use_liger_kernel", "use_rmpad"}
IGNORED = {  # harmless: nothing in the training changes
    "logging_dir": "train.log and metrics.jsonl are in the run directory",
    "logging_strategy": "logging follows logging_steps (metrics.jsonl gets every step)",
    "logging_first_step": "metrics.jsonl gets every step",
    "disable_tqdm": "the console progress is rank 0's",
    "do_train": "a run trains", "do_eval": "no evaluation", "per_device_eval_batch_size": "no evaluation",
    "eval_steps": "no evaluation", "overwrite_output_dir": "every run gets its own directory",
    "remove_unused_columns": "the data pipeline reads the messages only",
    "dataloader_pin_memory": "batches are pinned on CUDA", "dataloader_drop_last": "an epoch's tail short of a step is dropped",
    "dataloader_prefetch_factor": "trainer.data_workers collate ahead", "dataloader_persistent_workers": "workers live for the run",
    "ddp_timeout": "the process group timeout is 30 min", "ddp_backend": "nccl on GPU, gloo on CPU",
    "save_safetensors": "the HF export is safetensors", "save_only_model": "checkpoints keep the optimizer state for resume",
    "push_to_hub": "not supported", "tf32": "torch's default matmul precision is kept", "data_seed": "trainer.seed orders the data",
    "include_num_input_tokens_seen": "metrics.jsonl has tokens per step", "torch_empty_cache_steps": "not needed",
}
SCHEDULES = ("cosine", "cosine_with_min_lr", "linear", "constant", "constant_with_warmup")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw")
FREEZE = {"visual": ["vision", "merger"], "visual.merger": ["merger"], "merger": ["merger"], "audio_tower": ["audio"],
          "multi_modal_projector": ["projector"], "audio_projector": ["projector"]}


def translate_trainer_args(out, args: dict, parallel: str, packing: bool) -> None:
    merged = {**HF_DEFAULTS, **args}
    for key, target in SIMPLE.items():
        if key in merged:
            out.set(target, merged[key])
    out.set("optim.betas", [merged["adam_beta1"], merged["adam_beta2"]])
    _batch(out, merged, packing)
    _run_length(out, merged)
    _warmup(out, merged)
    _schedule(out, merged)
    _precision(out, merged)
    _report_to(out, merged.get("report_to", "none"), merged.get("run_name"))
    _freeze(out, merged.get("freeze_modules") or [])
    _checkpoints(out, merged)
    _switches(out, merged, parallel, packing)
    for key in sorted(set(args) - set(HF_DEFAULTS) - set(SIMPLE) - HANDLED_ELSEWHERE - set(SPECIAL)):
        if key in IGNORED:
            out.warn(f"trainer_args.{key}", f"ignored: {IGNORED[key]}")
        else:
            out.error(f"trainer_args.{key}", "no counterpart; remove it, or start from --print-translation and set "
                                             "the framework's equivalent key")


def _batch(out, args: dict, packing: bool) -> None:
    """With packing one pack is one micro-batch, so per-device packs become accumulation steps (the
    loss is the token mean over the whole step either way); without it, the micro-batch size."""
    per_device, accum = args["per_device_train_batch_size"], args["gradient_accumulation_steps"]
    if packing:
        if per_device > 1:
            out.warn("trainer_args.per_device_train_batch_size", f"{per_device} packs per rank and step run as "
                                                                 f"trainer.grad_accum={per_device * accum} (one pack per micro-batch)")
        out.set("trainer.grad_accum", per_device * accum)
    else:
        out.set("data.micro_batch_size", per_device)
        out.set("trainer.grad_accum", accum)


def _run_length(out, args: dict) -> None:
    if args["max_steps"] and args["max_steps"] > 0:  # transformers: max_steps > 0 overrides the epochs
        out.set("trainer.max_steps", args["max_steps"])
        return
    epochs = args["num_train_epochs"]
    if float(epochs) != int(epochs) or epochs < 1:
        out.error("trainer_args.num_train_epochs", f"{epochs}: only whole epochs (>= 1); give trainer_args.max_steps instead")
        return
    out.set("trainer.epochs", int(epochs))


def _warmup(out, args: dict) -> None:
    steps, ratio = args["warmup_steps"], args["warmup_ratio"]
    if steps and steps > 0:  # transformers: warmup_steps wins; a value below 1 is a ratio
        out.set(*(("optim.warmup_ratio", steps) if steps < 1 else ("optim.warmup_steps", int(steps))))
    elif ratio:
        out.set("optim.warmup_ratio", ratio)
    else:
        out.set("optim.warmup_steps", 0)


def _schedule(out, args: dict) -> None:
    """transformers' cosine and linear decay to 0; cosine_with_min_lr to its floor."""
    name, kwargs = args["lr_scheduler_type"], args.get("lr_scheduler_kwargs") or {}
    if name not in SCHEDULES:
        out.error("trainer_args.lr_scheduler_type", f"{name!r} has no counterpart; supported: {', '.join(SCHEDULES)}")
        return
    out.set("optim.schedule", {"cosine_with_min_lr": "cosine", "constant_with_warmup": "constant"}.get(name, name))
    if name == "cosine_with_min_lr":
        floor = kwargs.get("min_lr_rate", kwargs["min_lr"] / args["learning_rate"] if "min_lr" in kwargs else None)
        if floor is None:
            out.error("trainer_args.lr_scheduler_kwargs", "cosine_with_min_lr needs min_lr_rate or min_lr")
        out.set("optim.min_lr_ratio", floor)
    elif kwargs:
        out.error("trainer_args.lr_scheduler_kwargs", f"{sorted(kwargs)} has no counterpart for {name}")
    elif name in ("cosine", "linear"):
        out.set("optim.min_lr_ratio", 0.0)


def _precision(out, args: dict) -> None:
    if args.get("fp16"):
        out.error("trainer_args.fp16", "fp16 is not supported; use bf16: true")
    # bf16 -> auto: bf16 compute on CUDA (fp32 master weights), fp32 on a CPU, where bf16 is refused.
    out.set("parallel.precision", "auto" if args.get("bf16") else "fp32")


def _report_to(out, report_to, run_name) -> None:
    targets = [report_to] if isinstance(report_to, str) else list(report_to or [])
    wandb = "wandb" in targets or "all" in targets
    out.pick("logger", "wandb" if wandb else "default")
    if run_name is not None:
        out.set("name", str(run_name))
        if wandb:
            out.set("logger.wandb.name", str(run_name))
    for target in sorted(set(targets) - {"wandb", "all", "none"}):
        out.warn("trainer_args.report_to", f"{target!r} is not supported; metrics.jsonl has every step (and wandb)")


def _freeze(out, modules: list) -> None:
    unknown = [m for m in modules if m not in FREEZE]
    if unknown:
        out.error("trainer_args.freeze_modules", f"{unknown} have no counterpart; known: {', '.join(FREEZE)} "
                                                 "(or set optim.freeze with this model's components)")
    components = [c for m in modules if m in FREEZE for c in FREEZE[m]]
    out.set("optim.freeze", list(dict.fromkeys(components)))


def _checkpoints(out, args: dict) -> None:
    strategy = args.get("save_strategy", "steps")
    if strategy == "no":
        out.set("trainer.save_every", 0)
        out.set("trainer.save_final", False)
    elif strategy != "steps":
        out.warn("trainer_args.save_strategy", f"{strategy!r}: checkpoints are written every save_steps steps")
    resume = args.get("resume_from_checkpoint")
    if resume is True or resume == "true":
        out.error("trainer_args.resume_from_checkpoint", "true has no counterpart; give the checkpoint or run directory")
    elif resume:
        out.set("trainer.resume", str(resume))


def _switches(out, args: dict, parallel: str, packing: bool) -> None:
    """Keys whose value decides whether they are harmless."""
    evaluation = args.get("eval_strategy", args.get("evaluation_strategy", "no"))
    if evaluation != "no":
        out.warn("trainer_args.eval_strategy", f"{evaluation!r} is ignored: there is no evaluation loop")
    if args.get("group_by_length"):
        out.warn("trainer_args.group_by_length", "ignored: moot with packing" if packing else
                 "ignored: micro-batches are shuffled, not grouped by length")
    if args.get("optim", "adamw_torch") not in OPTIMIZERS:
        out.error("trainer_args.optim", f"{args['optim']!r}; the optimizer is AdamW ({', '.join(OPTIMIZERS)})")
    for key, target, strategies in (("ddp_find_unused_parameters", "parallel.find_unused_parameters", ("ddp",)),
                                    ("torch_compile", "parallel.compile", ("fsdp2", "ddp"))):
        if key in args and parallel in strategies:
            out.set(target, args[key])
        elif args.get(key):
            out.warn(f"trainer_args.{key}", f"ignored with parallel={parallel}")
    for key in ("ema_enabled", "use_muon"):
        if args.get(key):
            out.error(f"trainer_args.{key}", "not supported")
    if args.get("sp_ulysses_degree", 1) != 1:
        out.error("trainer_args.sp_ulysses_degree", "sequence parallelism is not supported; use 1")

