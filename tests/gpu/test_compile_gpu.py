"""parallel.compile on the GPU: compiled layers (Liger's fused loss, inductor for the rest) train like
the eager Liger path over packs of changing length, compile once plus one dynamic-shape recompile,
and never break the graph. Run: `pytest -m gpu tests/gpu/test_compile_gpu.py`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmms_engine.kernels import attention
from tests.gpu.compile_runs import train_steps

BACKENDS = ["torch_varlen", "flash_attn", "fa4"]


@pytest.fixture(scope="module")
def eager_liger():
    return train_steps(liger=True, compile=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_layers_train_like_eager_liger(backend, eager_liger):
    if not attention.is_available(backend, torch.device("cuda")):
        pytest.skip(f"{backend} is not installed")
    compiled = train_steps(liger=True, compile=True, backend=backend)
    # bf16 compute, Liger's kernels against inductor's: bf16-sized agreement over the six steps.
    np.testing.assert_allclose(compiled.losses, eager_liger.losses, rtol=2e-2)
    assert compiled.breaks == 0
    # The first pack's sizes, then one graph with the pack dimensions dynamic; nothing after that.
    assert compiled.graphs[1] <= 2 and compiled.graphs[1:] == [compiled.graphs[1]] * (len(compiled.graphs) - 1)


def test_compile_without_liger_matches_too(eager_liger):
    plain = train_steps(liger=False, compile=True)
    np.testing.assert_allclose(plain.losses, eager_liger.losses, rtol=2e-2)
    assert plain.breaks == 0 and plain.graphs[1] <= 2 and plain.graphs[-1] == plain.graphs[1]


def test_liger_ops_stay_out_of_compiled_layers():
    """With compile the decoder layers keep transformers' own norm / MLP forward (inductor fuses them)."""
    run = train_steps(liger=True, compile=True, packs=[(64, 64)])
    layer = run.module.lm.model.layers[0]
    assert "forward" not in vars(layer.input_layernorm) and "forward" not in vars(layer.mlp)
