"""Choosing the packed attention backend: `auto`, a named backend this machine cannot run (one line,
before the model is built), and the FA4 custom ops' shapes as torch.compile sees them (fake tensors)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from lmms_engine.kernels import attention, fa4
from lmms_engine.kernels.patcher import KernelPatcher


def test_auto_is_sdpa_on_cpu():
    assert attention.resolve_backend("auto", torch.device("cpu")) == "sdpa"


@pytest.mark.parametrize("backend", ["fa4", "torch_varlen", "flex"])
def test_a_gpu_backend_on_cpu_is_refused_in_one_line_naming_the_key(backend):
    with pytest.raises(ValueError) as err:
        KernelPatcher(use_rmpad=True, attn_backend=backend).check(torch.device("cpu"))
    message = str(err.value)
    assert message.startswith(f"kernels.attn_backend={backend} cannot run here: ")
    assert "cpu" in message and message.endswith("use kernels.attn_backend=auto") and "\n" not in message


def test_fa4_on_a_hopper_without_the_package_says_how_to_install_it(monkeypatch):
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn-4 is installed here")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    reason = attention.unavailable_reason("fa4", torch.device("cuda"))
    assert reason == "the flash-attn-4 package is not installed: install it with `uv sync --extra fa4` (flash-attn-4, CUDA 13 wheels)"


def test_fa4_on_an_ampere_gpu_names_the_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    assert "NVIDIA A100 has compute capability 8.0" in fa4.unavailable_reason(torch.device("cuda"))
    assert "fa4" not in [b for b in attention.AUTO_ORDER_CUDA if attention.is_available(b, torch.device("cuda"))]


def test_fa4_ops_shapes_under_fake_tensors():
    """What dynamo / inductor trace: out like q (value head dim), lse (heads, tokens) fp32; the
    backward's gradients like q, k, v (GQA: k / v keep their fewer heads)."""
    with FakeTensorMode():
        q = torch.empty(300, 12, 128, dtype=torch.bfloat16)
        k = v = torch.empty(300, 2, 128, dtype=torch.bfloat16)
        cu = torch.empty(4, dtype=torch.int32)
        out, lse = torch.ops.lmms.fa4_varlen_fwd(q, k, v, cu, 200, 0.088, True)
        dq, dk, dv = torch.ops.lmms.fa4_varlen_bwd(out, q, k, v, out, lse, cu, 200, 0.088, True)
    assert (out.shape, out.dtype, lse.shape, lse.dtype) == ((300, 12, 128), torch.bfloat16, (12, 300), torch.float32)
    assert (dq.shape, dk.shape, dv.shape) == ((300, 12, 128), (300, 2, 128), (300, 2, 128))


def test_fa4_is_not_chosen_for_a_head_dim_it_is_not_verified_for(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    reason = attention.unavailable_reason("fa4", torch.device("cuda"), head_dim=80)
    assert reason == "head dim 80 is not one FA4 is verified for (64, 128)"
