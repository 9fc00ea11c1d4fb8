"""parallel.offload_activations on CPU: the checkpointed decoder layers' inputs go through the
offloader (a host copy here; pinned memory on a side stream on CUDA: tests/gpu/test_offload_gpu.py)
and training computes exactly what it computes without it."""

from __future__ import annotations

import weakref

import pytest
import torch

from lmms_engine.compat import CHECKPOINT_WRAPPER_PREFIX
from lmms_engine.config import validate
from lmms_engine.overrides import check_cli_overrides
from lmms_engine.data.collate import collate_packed
from lmms_engine.parallel.common import apply_checkpointing_and_compile
from lmms_engine.parallel.offload import ActivationOffloader
from tests.conftest import compose_config
from tests.unit.test_packed_parity import _loss_and_grads, _module, _samples

LAYERS = 2  # test_packed_parity.TINY


def _run(every: int, offloader: ActivationOffloader | None):
    module, patcher = _module(padding_free=True)
    units = module.lm.model.layers[0].__class__,
    apply_checkpointing_and_compile(module, units, every, compile=False, offloader=offloader)
    return _loss_and_grads(module, patcher, collate_packed(_samples()))


def _assert_same(a, b):
    assert a[0] == b[0]
    a_grads, b_grads = _plain_names(a[1]), _plain_names(b[1])
    assert a_grads.keys() == b_grads.keys()
    for name, grad in a_grads.items():
        torch.testing.assert_close(b_grads[name], grad, atol=1e-6, rtol=0, msg=name)


def _plain_names(grads: dict) -> dict:
    return {name.replace(CHECKPOINT_WRAPPER_PREFIX, ""): grad for name, grad in grads.items()}


def test_offload_gives_the_loss_and_gradients_of_plain_checkpointing_and_none():
    offloader = ActivationOffloader()
    offloaded = _run(1, offloader)
    _assert_same(_run(1, None), offloaded)
    _assert_same(_run(0, None), offloaded)


def test_every_checkpointed_layer_input_goes_through_the_offloader_once_each_way():
    offloader = ActivationOffloader()
    _run(1, offloader)
    tokens = collate_packed(_samples()).input_ids.numel()
    assert offloader.packed_tensors == offloader.unpacked_tensors == LAYERS
    assert offloader.packed_bytes == LAYERS * tokens * 64 * 4  # layers x tokens x hidden x fp32


def test_selective_checkpointing_offloads_only_the_checkpointed_layers():
    offloader = ActivationOffloader()
    offloaded = _run(2, offloader)
    assert offloader.packed_tensors == offloader.unpacked_tensors == 1
    _assert_same(_run(2, None), offloaded)


def test_no_grad_forward_packs_nothing():
    offloader = ActivationOffloader()
    module, patcher = _module(padding_free=True)
    apply_checkpointing_and_compile(module, (module.lm.model.layers[0].__class__,), 1, compile=False, offloader=offloader)
    batch = collate_packed(_samples())
    inputs = batch.model_inputs(("input_ids", "position_ids", "attention_mask"))
    inputs.update(patcher.attention_kwargs(batch))
    with torch.no_grad():
        module(labels=batch.labels, **inputs)
    assert offloader.packed_tensors == 0


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, hidden_states):
        return hidden_states + torch.tanh(self.linear(hidden_states))


@pytest.mark.parametrize("offload", [False, True])
def test_after_forward_no_layer_input_is_held_on_its_device_with_offload(offload):
    """Plain checkpointing keeps every layer input alive until backward; with offload only host copies are."""
    torch.manual_seed(0)
    blocks = torch.nn.Sequential(*[_Block() for _ in range(3)])
    apply_checkpointing_and_compile(blocks, (_Block,), 1, compile=False, offloader=ActivationOffloader() if offload else None)
    inputs = []
    for block in blocks:
        block.register_forward_pre_hook(lambda _, args: inputs.append(weakref.ref(args[0])))
    out = blocks(torch.randn(4, 8, requires_grad=True) * 1.0)
    alive = [ref() is not None for ref in inputs[1:]]  # the first is the test's own input
    assert alive == [not offload] * 2
    out.sum().backward()


def test_offload_without_checkpointing_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match=r"parallel.offload_activations=true .* set parallel.activation_checkpointing=true"):
        validate(compose_config("parallel.offload_activations=true"))
    with pytest.raises(ValueError, match=r"parallel.offload_activations='yes' must be true or false"):
        validate(compose_config("parallel.offload_activations=yes"))
    validate(compose_config("parallel.offload_activations=true", "parallel.activation_checkpointing=2"))


def test_deepspeed_refuses_offload_naming_the_strategies_that_run_it():
    with pytest.raises(ValueError, match=r"parallel.offload_activations is a key of parallel=fsdp2 \(or single / ddp\)"):
        check_cli_overrides(["parallel=zero2", "parallel.offload_activations=true"])
    with pytest.raises(ValueError, match=r"parallel.offload_activations=True: activation offload runs with parallel=single, "
                                         r"ddp or fsdp2, not lmms_engine.parallel.deepspeed.DeepSpeedZero"):
        validate(compose_config("parallel=zero2", "+parallel.offload_activations=true"))


def _vl_loss_and_grads(offloader: ActivationOffloader | None):
    from lmms_engine.kernels.loss import cross_entropy_sum
    from lmms_engine.train.module import CausalLMWithLoss
    from tests.unit.test_vl_training import _bundle, _inputs

    bundle = _bundle()
    module = CausalLMWithLoss(bundle.model, cross_entropy_sum, bundle.hidden_states)
    apply_checkpointing_and_compile(module, bundle.shard_units, 1, compile=False, encoder_types=bundle.encoder_units,
                                    offloader=offloader)
    inputs = _inputs(bundle, with_image=True)
    loss = module(labels=torch.roll(inputs["input_ids"], -1), **inputs)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}, inputs


def test_vl_offload_gives_the_same_loss_and_gradients_and_offloads_decoder_inputs_only():
    pytest.importorskip("torchvision", reason="Qwen2.5-VL processors need torchvision")
    offloader = ActivationOffloader()
    *offloaded, inputs = _vl_loss_and_grads(offloader)
    *plain, _ = _vl_loss_and_grads(None)
    _assert_same(plain, offloaded)
    tokens, hidden, layers = inputs["input_ids"].numel(), 256, 4  # conf/model/tiny_qwen2_5_vl.yaml (text)
    assert offloader.packed_tensors == offloader.unpacked_tensors == layers
    assert offloader.packed_bytes == layers * tokens * hidden * 4


def test_unpacking_one_entry_brings_back_the_one_packed_before_it():
    offloader = ActivationOffloader()
    tensors = [torch.full((2, 3), float(i), requires_grad=i > 0) for i in range(3)]
    entries = [offloader.pack(t) for t in tensors]
    assert all(entry.restored is None for entry in entries)
    last = offloader.unpack(entries[2])
    assert torch.equal(last, tensors[2]) and last.requires_grad and last.grad_fn is None
    assert entries[1].restored is not None and entries[0].restored is None  # prefetched one layer ahead
    prefetched = entries[1].restored
    middle = offloader.unpack(entries[1])
    assert middle is prefetched and torch.equal(middle, tensors[1])
    first = offloader.unpack(entries[0])
    assert torch.equal(first, tensors[0]) and not first.requires_grad
    assert (offloader.packed_tensors, offloader.unpacked_tensors, offloader.packed_bytes) == (3, 3, 3 * 6 * 4)


def test_an_entry_holds_a_copy_not_the_packed_tensor():
    offloader = ActivationOffloader()
    tensor = torch.ones(4)
    entry = offloader.pack(tensor)
    tensor.zero_()  # what reusing the freed device memory would do
    assert offloader.unpack(entry).tolist() == [1.0] * 4
    assert offloader.unpack(entry).tolist() == [1.0] * 4  # a retained graph may unpack again
