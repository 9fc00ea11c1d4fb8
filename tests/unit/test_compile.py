"""parallel.compile on CPU: the tiny model compiled per decoder layer trains exactly like eager over
packs of changing lengths, with one dynamic-shape recompile at most and no graph break.

The default test traces with dynamo + AOTAutograd and no code generation (backend aot_eager: what
breaks graphs or recompiles is decided there, in seconds); the slow one runs inductor through the
strategy, as a run does. Liger's kernels are CUDA-only: tests/gpu/test_compile_gpu.py covers them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmms_engine import compat
from lmms_engine.data.collate import collate_packed
from lmms_engine.data.types import Sample
from lmms_engine.kernels.patcher import KernelPatcher
from lmms_engine.models.qwen2 import build_qwen2
from lmms_engine.parallel.common import apply_compile
from lmms_engine.parallel.single import SingleDevice
from lmms_engine.train.loop import StepContext, note_warmup, train_step
from lmms_engine.train.module import CausalLMWithLoss
from lmms_engine.train.optim import build_adamw
from tests.samples import random_samples

TINY = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)
# Four steps, four pack lengths and document counts (53, 71, 62, 74 tokens).
PACKS = [(17, 31, 5), (33, 9, 21, 8), (50, 12), (7, 7, 30, 19, 11)]


def _samples(lengths, seed: int) -> list[Sample]:
    return random_samples(lengths, seed, prefix=f"p{seed}s")


def _losses(compile_backend: str | None, strategy_compiles: bool = False) -> list[float]:
    """Four optimizer steps of the tiny model over PACKS; compile_backend: None = eager."""
    torch.manual_seed(0)
    bundle = build_qwen2(name="t", config=TINY)
    patcher = KernelPatcher(use_rmpad=True, attn_backend="sdpa")
    patcher.apply(bundle.model, torch.device("cpu"), padding_free=True, compiled=compile_backend is not None)
    module = CausalLMWithLoss(bundle.model, patcher.loss_fn())
    strategy = SingleDevice(device="cpu", compile=strategy_compiles)
    if compile_backend is not None and not strategy_compiles:
        assert apply_compile(module, bundle.shard_units, backend=compile_backend) == TINY["num_hidden_layers"]
    module = strategy.prepare(module, bundle.shard_units)
    optimizer = build_adamw(module, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8)
    samples = [s for step, lengths in enumerate(PACKS) for s in _samples(lengths, step)]
    ctx = StepContext(module=module, optimizer=optimizer, strategy=strategy,
                      collate=lambda idx: collate_packed([samples[i] for i in idx]),
                      attention_kwargs=patcher.attention_kwargs, flops_fn=lambda batch: 0.0, max_grad_norm=1.0)
    starts = np.cumsum([0] + [len(p) for p in PACKS])
    return [train_step(ctx, [list(range(starts[i], starts[i + 1]))])["loss"] for i in range(len(PACKS))]


def _compiled_run(backend: str, strategy_compiles: bool = False) -> tuple[list[float], int, int]:
    torch.compiler.reset()
    counters = compat.dynamo_counters()
    counters.clear()
    losses = _losses(backend, strategy_compiles)
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    torch.compiler.reset()
    return losses, graphs, breaks


def test_compiled_layers_train_like_eager_without_recompiling_per_pack_length():
    eager = _losses(None)
    compiled, graphs, breaks = _compiled_run("aot_eager")
    assert len(set(eager)) == len(PACKS)  # the steps differ (the weights and data move)
    np.testing.assert_allclose(compiled, eager, rtol=1e-5)
    assert breaks == 0
    # One graph for both layers at the first pack's sizes, one with the token / document dimensions
    # dynamic from the second pack on: none for the third and fourth.
    assert graphs == 2


@pytest.mark.slow
def test_inductor_through_the_strategy_trains_like_eager():
    eager = _losses(None)
    compiled, graphs, breaks = _compiled_run("inductor", strategy_compiles=True)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4)
    assert (graphs, breaks) == (2, 0)


def test_warmup_line_reports_the_excess_of_the_first_steps():
    times: list[float] = []
    assert note_warmup(times, 30.0, last=False) is None
    assert note_warmup(times, 12.0, last=False) is None
    line = note_warmup(times, 2.0, last=False)
    assert line.startswith("compile + warm-up: 38.0 s") and "steady step 2.00 s" in line
    assert note_warmup(times, 2.0, last=False) is None and len(times) == 3  # logged once
    assert note_warmup([], 5.0, last=True).startswith("compile + warm-up: 0.0 s")  # a one-step run still says it
    slower_later = []  # the third step slower than the second (a longer pack): still no negative warm-up
    for seconds in (0.5, 0.3, 1.9):
        line = note_warmup(slower_later, seconds, last=False)
    assert line.startswith("compile + warm-up: 1.8 s (first steps 0.50, 0.30, 1.90 s; steady step 0.30 s)")


def test_liger_public_patch_keeps_classes_and_compiled_runs_restore_its_rotary():
    """liger-kernel's qwen2 patch swaps module-level classes (every later model would get them) and
    the rotary function: the classes are put back at once, the rotary function on demand."""
    from transformers.models.qwen2 import modeling_qwen2

    from lmms_engine.kernels.liger import apply_liger, restore_module_level

    def rotary_module() -> str:
        return modeling_qwen2.apply_rotary_pos_emb.__module__

    restore_module_level()  # whatever an earlier test patched
    norm_class, mlp_class = modeling_qwen2.Qwen2RMSNorm, modeling_qwen2.Qwen2MLP
    assert rotary_module() == "transformers.models.qwen2.modeling_qwen2"
    bundle = build_qwen2(name="t", config=TINY)
    try:
        assert apply_liger(bundle.model)
        assert "forward" in vars(bundle.model.model.layers[0].input_layernorm)  # the instance is patched
        assert (modeling_qwen2.Qwen2RMSNorm, modeling_qwen2.Qwen2MLP) == (norm_class, mlp_class)
        assert rotary_module().startswith("liger_kernel")  # Liger's rope, module-level
        assert "transformers.models.qwen2.modeling_qwen2.apply_rotary_pos_emb" in restore_module_level()
        assert rotary_module() == "transformers.models.qwen2.modeling_qwen2"
        assert restore_module_level() == []  # idempotent
    finally:
        restore_module_level()


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing, graphs", [(False, 2), (True, 3)])
def test_compiled_units_under_fsdp2_train_like_eager(checkpointing, graphs):
    """FSDP2's hooks (and the checkpoint wrapper) run around the compiled forward, outside the
    graph: one-rank gloo group, fp32. Checkpointing recomputes under another grad mode: one graph more."""
    import os
    import tempfile

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from lmms_engine.parallel.common import apply_activation_checkpointing
    from lmms_engine.parallel.fsdp2 import shard_with_fsdp2

    def losses(backend: str | None) -> list[float]:
        torch.manual_seed(0)
        bundle = build_qwen2(name="t", config=TINY)
        patcher = KernelPatcher(use_rmpad=True, attn_backend="sdpa")
        patcher.apply(bundle.model, torch.device("cpu"), padding_free=True)
        module = CausalLMWithLoss(bundle.model, patcher.loss_fn())
        if checkpointing:
            apply_activation_checkpointing(module, bundle.shard_units)
        if backend:
            apply_compile(module, bundle.shard_units, backend=backend)
        policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
        module = shard_with_fsdp2(module, bundle.shard_units, mesh, policy, True, False)
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
        out = []
        for step, lengths in enumerate(PACKS):
            batch = collate_packed(_samples(lengths, step))
            inputs = {**batch.model_inputs(("input_ids", "position_ids", "attention_mask")), **patcher.attention_kwargs(batch)}
            loss = module(labels=batch.labels, **inputs) / batch.num_label_tokens
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            out.append(loss.item())
        return out

    store = dist.FileStore(os.path.join(tempfile.mkdtemp(prefix="lmms_pg_"), "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        eager = losses(None)
        torch.compiler.reset()
        compat.dynamo_counters().clear()
        compiled = losses("aot_eager")
        counters = compat.dynamo_counters()
        assert (counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())) == (graphs, 0)
        np.testing.assert_allclose(compiled, eager, rtol=1e-5)
    finally:
        torch.compiler.reset()
        dist.destroy_process_group()


@pytest.mark.slow
def test_compiled_vision_blocks_match_eager_and_stop_recompiling():
    """Qwen2.5-VL's vision blocks compiled (varlen attention with its CPU reference inside the graph):
    the tower's output is unchanged, nothing breaks the graph, and once every changing dimension
    (images, windows, patches) has been seen dynamic, new image counts reuse the graphs."""
    from tests.unit.test_vl_training import _bundle, _inputs

    from lmms_engine.models.qwen2_5_vl.kernels import patch_vision_attention

    bundle = _bundle()
    inputs = _inputs(bundle, with_image=True)
    visual = bundle.model.model.visual
    patch_vision_attention(visual, "sdpa")
    image_sets = [(torch.cat([inputs["pixel_values"]] * n), torch.cat([inputs["image_grid_thw"]] * n)) for n in (1, 2, 3, 5, 4)]
    with torch.no_grad():
        eager = [visual(pixels, grid_thw=grids).pooler_output for pixels, grids in image_sets]
        torch.compiler.reset()
        counters = compat.dynamo_counters()
        counters.clear()
        assert apply_compile(bundle.model, bundle.encoder_units, backend="aot_eager") == len(visual.blocks)
        compiled = [visual(pixels, grid_thw=grids).pooler_output for pixels, grids in image_sets[:3]]
        graphs = counters["stats"]["unique_graphs"]
        compiled += [visual(pixels, grid_thw=grids).pooler_output for pixels, grids in image_sets[3:]]
    for got, expected in zip(compiled, eager):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert sum(counters["graph_break"].values()) == 0
    assert counters["stats"]["unique_graphs"] == graphs <= 4  # no graph for 5 or 4 images
    torch.compiler.reset()
