"""LoRA fine-tuning on peft: adapters injected in place into the HF model, the rest frozen.

`peft.inject_adapter_in_model` keeps the module tree (decoder_path, encoder prefixes, FSDP units
and Liger patches still find their modules; a PeftModel wrapper would shadow the HF model's
`.model`). Adapters go on the nn.Linear layers named in `target_modules` inside the chosen
components, never on lm_head (the fused loss reads its weight directly). Everything else,
including whole components (a vision tower), is frozen: only the adapters reach the optimizer and
the checkpoints. `settings` is config.LoraSettings (not imported: config imports train/).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from lmms_engine.models.flops import matmul_params
from lmms_engine.train.optim import check_component_names, component_of

log = logging.getLogger(__name__)

ADAPTER = "default"  # peft's adapter name; exported files drop it, as PeftModel.save_pretrained does


def lora_targets(model: nn.Module, settings, components: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Full names (in `model`) of the nn.Linear layers that get adapters."""
    check_component_names(settings.components, components, "optim.lora.components")
    wanted = set(settings.target_modules)
    targets = [name for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in wanted and name != "lm_head"
               and component_of(name, components) in settings.components]
    if not targets:
        raise ValueError(f"optim.lora.target_modules={list(settings.target_modules)} match no nn.Linear in the "
                         f"components {list(settings.components)}; name the projections, e.g. [q_proj,k_proj,v_proj,o_proj]")
    return targets


def peft_config(settings, targets: list[str], base_model: str | None = None) -> LoraConfig:
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=targets, bias="none", base_model_name_or_path=base_model)


def apply_lora(model: nn.Module, settings, components: Mapping[str, tuple[str, ...]], seed: int = 0,
               frozen_dtype: torch.dtype | None = None) -> LoraConfig:
    """Inject the adapters into `model` in place; only they stay trainable (fp32). Returns the peft config.

    The adapters' random init draws from `seed` alone, so every rank and every strategy starts
    from the same adapters whatever the model build consumed of the RNG (ZeRO-3's partitioned
    init, FSDP2's meta build on ranks > 0). frozen_dtype (Strategy.frozen_dtype()): the dtype the
    frozen weights are stored in; None leaves them as built."""
    targets = lora_targets(model, settings, components)
    config = peft_config(settings, targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, param in model.named_parameters():
        adapter = is_adapter(name)
        param.requires_grad_(adapter)
        if adapter and param.dtype != torch.float32:  # adapters train in fp32 whatever the base dtype
            param.data = param.data.float()
    if frozen_dtype is not None:
        store_frozen(model, frozen_dtype)
    trained = adapter_params(model)
    log.info("LoRA rank %d on %d layers: %.2fM trainable parameters", settings.rank, len(targets), trained / 1e6)
    return config


def store_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast every frozen floating-point weight to `dtype` (the compute dtype: bf16 on GPU), in place,
    so it exists once, in that dtype. Returns how many elements were cast."""
    cast = 0
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
            cast += param.numel()
    return cast


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def adapter_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if is_adapter(n))


def lora_step_flops(step_flops, text_config, decoder_adapter_params: int):
    """MFU with a frozen decoder: a frozen weight costs forward (2) + input-gradient (2) FLOPs per
    token and parameter, no weight gradient (2): 6N becomes 4N; each adapter weight costs the full 6.
    Attention (no weights) and the encoders' own terms are unchanged (see docs/performance.md)."""
    frozen = matmul_params(text_config)

    def flops(batch) -> float:
        tokens = sum(batch["doc_lengths"])
        return step_flops(batch) - 2.0 * frozen * tokens + 6.0 * decoder_adapter_params * tokens

    return flops


# ---- export ----

def merged_state(state: Mapping[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A full state dict of the adapted model as the plain HF model's: W + scaling * B @ A per layer,
    `.base_layer.` dropped from the names (works on any strategy's gathered full state dict)."""
    merged = {}
    for name, tensor in state.items():
        if is_adapter(name):
            continue
        if ".base_layer.weight" in name:
            prefix = name[: -len("base_layer.weight")]
            a, b = state[f"{prefix}lora_A.{ADAPTER}.weight"], state[f"{prefix}lora_B.{ADAPTER}.weight"]
            delta = (b.float() @ a.float()) * scaling
            tensor = (tensor.float() + delta).to(tensor.dtype)
        merged[name.replace(".base_layer.", ".")] = tensor
    return merged


def adapter_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter weights under the names PeftModel.save_pretrained writes (and from_pretrained reads)."""
    return {"base_model.model." + name.replace(f".{ADAPTER}.", "."): tensor.contiguous()
            for name, tensor in state.items() if is_adapter(name)}
