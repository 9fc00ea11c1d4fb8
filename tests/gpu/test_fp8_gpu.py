"""kernels.fp8 on the GPU: torchao's Float8Linear on the decoder projections trains close to bf16,
with and without compile; refused in one line where the GPU has no FP8.
Run: `pytest -m gpu tests/gpu/test_fp8_gpu.py` (needs `uv sync --extra fp8`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmms_engine.kernels.fp8 import MIN_CAPABILITY, check_fp8_supported
from tests.gpu.compile_runs import CONFIG, train_steps

HAS_FP8 = torch.cuda.is_available() and torch.cuda.get_device_capability() >= MIN_CAPABILITY
needs_fp8 = pytest.mark.skipif(not HAS_FP8, reason="no FP8 tensor cores on this GPU")
PROJECTIONS = 7  # q, k, v, o, gate, up, down


@pytest.fixture(scope="module")
def bf16_compiled():
    return train_steps(liger=True, compile=True)


@needs_fp8
@pytest.mark.parametrize("compile", [True, False], ids=["compiled", "eager"])
def test_fp8_trains_close_to_bf16(compile, bf16_compiled):
    float8 = pytest.importorskip("torchao.float8.float8_linear")
    run = train_steps(liger=True, compile=compile, fp8=True)
    converted = [m for m in run.module.modules() if isinstance(m, float8.Float8Linear)]
    assert len(converted) == PROJECTIONS * CONFIG["num_hidden_layers"]
    assert type(run.module.lm.lm_head) is torch.nn.Linear
    # FP8 (e4m3, tensorwise scales) against bf16: close, not equal (the six-step gap stays small).
    np.testing.assert_allclose(run.losses, bf16_compiled.losses, rtol=5e-2)
    assert run.losses != bf16_compiled.losses  # FP8 matmuls did run
    if compile:
        assert run.breaks == 0 and run.graphs[-1] == run.graphs[1] <= 2


@pytest.mark.skipif(HAS_FP8, reason="this GPU has FP8: nothing to refuse")
def test_fp8_refused_on_a_gpu_without_it():
    with pytest.raises(ValueError, match=r"^kernels\.fp8=true needs .*compute capability"):
        check_fp8_supported(torch.device("cuda"))
