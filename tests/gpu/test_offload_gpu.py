"""One GPU, one long document: parallel.offload_activations keeps the checkpointed decoder layers'
inputs in host memory, so the peak CUDA memory drops by about (layers - 2) boundary tensors (in
backward, one layer's input is back on the GPU and the previous one is being prefetched), while the
loss and the gradients stay those of plain activation checkpointing.

Run on a GPU: `pytest -m gpu tests/gpu/test_offload_gpu.py`.
"""

from __future__ import annotations

import torch

from lmms_engine.compat import CHECKPOINT_WRAPPER_PREFIX
from lmms_engine.models.qwen2 import build_qwen2
from lmms_engine.parallel.single import single_device
from lmms_engine.train.module import CausalLMWithLoss
from tests.unit.test_lora_strategies import _summed_ce

TOKENS, HIDDEN, LAYERS = 32768, 1024, 8
SMALL = dict(vocab_size=1024, hidden_size=HIDDEN, intermediate_size=2816, num_hidden_layers=LAYERS,
             num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=TOKENS, tie_word_embeddings=True)
BOUNDARY_BYTES = TOKENS * HIDDEN * 2  # one layer's bf16 input


def _step(offload: bool) -> tuple[float, dict[str, torch.Tensor], float, int]:
    """(loss, gradients, peak GB over forward + backward, tensors offloaded) of one step on one document."""
    strategy = single_device(device="cuda", precision="bf16", activation_checkpointing=True, offload_activations=offload)
    strategy.setup()
    try:
        torch.manual_seed(0)
        bundle = build_qwen2(name="t", config=SMALL)
        module = strategy.prepare(CausalLMWithLoss(bundle.model, _summed_ce, bundle.hidden_states), bundle.shard_units,
                                  bundle.encoder_units)
        ids = torch.randint(0, SMALL["vocab_size"], (1, TOKENS), device="cuda")
        position_ids = torch.arange(TOKENS, device="cuda")[None]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss = module(labels=ids, input_ids=ids, position_ids=position_ids)
        strategy.backward(loss, module)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        grads = {n.replace(CHECKPOINT_WRAPPER_PREFIX, ""): p.grad.full_tensor().float().cpu()
                 for n, p in module.named_parameters() if p.grad is not None}
        packed = strategy.offloader.packed_tensors if strategy.offloader else 0
        return loss.item(), grads, peak, packed
    finally:
        strategy.teardown()


def _relative_differences(grads: dict, reference: dict) -> dict[str, float]:
    return {name: ((grad - reference[name]).norm() / reference[name].norm().clamp_min(1e-12)).item()
            for name, grad in grads.items()}


def test_offload_lowers_peak_memory_and_keeps_loss_and_gradients():
    plain_loss, plain_grads, plain_peak, _ = _step(offload=False)
    # The GPU's own run-to-run noise: the same plain step again (bf16 backward kernels accumulate with
    # atomics, so two identical steps differ by up to ~1e-2 relative on some gradients).
    _, again_grads, _, _ = _step(offload=False)
    noise = _relative_differences(again_grads, plain_grads)
    loss, grads, peak, packed = _step(offload=True)
    assert packed == LAYERS
    assert loss == plain_loss  # the forward is deterministic: offload restores the exact layer inputs
    assert grads.keys() == plain_grads.keys()
    floor = max(noise.values())
    for name, difference in _relative_differences(grads, plain_grads).items():
        assert difference <= 2 * floor + 1e-5, (name, difference, floor)
    saved = plain_peak - peak
    assert saved > (LAYERS - 4) * BOUNDARY_BYTES, (plain_peak / 1e9, peak / 1e9, BOUNDARY_BYTES / 1e9)


def test_packed_memory_can_be_reused_at_once_and_unpack_still_gives_the_values():
    """record_stream / events: freeing the device tensor right after pack, and overwriting whatever
    reuses its memory, never changes what comes back; nor does reading right after unpack."""
    from lmms_engine.parallel.offload import ActivationOffloader

    offloader = ActivationOffloader()
    expected, entries = [], []
    for i in range(4):
        tensor = torch.randn(8192, 4096, device="cuda")  # 128 MB: a copy takes a few ms
        expected.append(tensor.cpu())
        entries.append(offloader.pack(tensor))
        del tensor
        torch.empty(8192, 4096, device="cuda").fill_(float("nan"))  # likely the freed block
    for i in reversed(range(4)):
        restored = offloader.unpack(entries[i])
        assert restored.is_cuda
        assert torch.equal((restored * 1).cpu(), expected[i]), i
