"""A few training steps of a small Qwen2 on the GPU through the framework's strategy and step, with
or without Liger / compile / FP8: what test_compile_gpu.py and test_fp8_gpu.py compare."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmms_engine import compat
from lmms_engine.data.collate import collate_packed
from lmms_engine.data.types import Sample
from lmms_engine.kernels.patcher import KernelPatcher
from lmms_engine.models.qwen2 import build_qwen2
from lmms_engine.parallel.single import single_device
from lmms_engine.train.loop import StepContext, train_step
from lmms_engine.train.module import CausalLMWithLoss
from lmms_engine.train.optim import build_adamw
from tests.samples import random_samples

# Every projection a multiple of 16 (FP8 matmuls); 2 layers.
CONFIG = dict(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False)
# Packs of changing total length and document count; no total is a multiple of 16 (FP8 padding).
PACKS = [(37, 300, 5, 128), (911, 64), (200, 200, 200, 17, 9), (1500,), (64, 64, 640, 33), (700, 300, 3)]


@dataclass
class RunResult:
    losses: list[float]
    graphs: list[int]  # after each step: graphs dynamo compiled so far (first compile + recompiles)
    breaks: int  # graph breaks
    module: torch.nn.Module


def _samples(lengths, seed: int) -> list[Sample]:
    return random_samples(lengths, seed, vocab=500, masked_part=3, prefix=f"p{seed}s")


def train_steps(*, liger: bool, compile: bool, fp8: bool = False, backend: str = "torch_varlen",
                packs=PACKS, lr: float = 1e-3) -> RunResult:
    torch.compiler.reset()
    counters = compat.dynamo_counters()
    counters.clear()
    torch.manual_seed(0)
    strategy = single_device(device="cuda", precision="bf16", compile=compile)
    strategy.setup()
    try:
        with torch.device("cuda"):
            bundle = build_qwen2(name="gpu-test", config=CONFIG, tokenizer=None)
        patcher = KernelPatcher(use_rmpad=True, attn_backend=backend, use_liger_kernel=liger, fp8=fp8)
        patcher.apply(bundle.model, strategy.device, padding_free=True, compiled=strategy.compile)
        module = strategy.prepare(CausalLMWithLoss(bundle.model, patcher.loss_fn()), bundle.shard_units)
        optimizer = build_adamw(module, lr=lr, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8)
        samples = [s for step, lengths in enumerate(packs) for s in _samples(lengths, step)]
        ctx = StepContext(module=module, optimizer=optimizer, strategy=strategy,
                          collate=lambda idx: collate_packed([samples[i] for i in idx]),
                          attention_kwargs=patcher.attention_kwargs, flops_fn=lambda batch: 0.0, max_grad_norm=1.0)
        starts = np.cumsum([0] + [len(p) for p in packs])
        losses, graphs = [], []
        for i in range(len(packs)):
            losses.append(train_step(ctx, [list(range(starts[i], starts[i + 1]))])["loss"])
            graphs.append(counters["stats"]["unique_graphs"])
        return RunResult(losses, graphs, sum(counters["graph_break"].values()), module)
    finally:
        strategy.teardown()
        torch.compiler.reset()
