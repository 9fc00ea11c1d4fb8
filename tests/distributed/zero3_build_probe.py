"""Run under `torchrun --nproc_per_node=2`: build the model as the trainer does under ZeRO-3 and
write what each rank holds to <out>/rank<R>.json (read by test_zero3_build.py).

    python -m torch.distributed.run --nproc_per_node=2 tests/distributed/zero3_build_probe.py OUT [overrides...]

Records, right after the build: the elements each rank holds locally against the model's total
(partitioned: about 1/world each), and whether every gathered weight equals the single-process
build of the same seed. With `bf16` (DeepSpeed's bf16 path, forced on CPU), after build_optimizer:
the dtype compute runs in, whether DeepSpeed's fp32 masters are the fp32 weights as built, and
whether the lm_head weight is registered as an external parameter of the trained module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lmms_engine.config import validate  # noqa: E402
from lmms_engine.parallel.deepspeed import import_deepspeed  # noqa: E402
from lmms_engine.train.app import _build_model, instantiate  # noqa: E402
from lmms_engine.train.module import CausalLMWithLoss  # noqa: E402
from lmms_engine.train.state import seed_everything  # noqa: E402
from tests.conftest import compose_config  # noqa: E402


def main(out: Path, overrides: list[str]) -> None:
    rc = validate(compose_config("parallel=zero3", "parallel.device=cpu", *overrides))
    strategy = instantiate(rc.groups["parallel"])
    strategy.setup()
    try:
        report = probe(rc, strategy)
    finally:
        strategy.teardown()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{strategy.rank}.json").write_text(json.dumps(report, indent=2))


def probe(rc, strategy) -> dict:
    deepspeed = import_deepspeed()
    seed_everything(rc.trainer.seed)
    reference = instantiate(rc.groups["model"], _convert_="all").model.state_dict()  # whole, single-process build
    seed_everything(rc.trainer.seed)
    model = _build_model(rc, strategy).model
    params = dict(model.named_parameters())
    report = {
        "world_size": strategy.world_size,
        "all_zero_params": all(hasattr(p, "ds_id") for p in params.values()),
        "local_numel": sum(p.ds_tensor.numel() + p.data.numel() for p in params.values()),
        "total_numel": sum(p.ds_numel for p in params.values()),
        "built_dtypes": sorted({str(p.ds_tensor.dtype) for p in params.values()}),
        "lm_head_tied": model.lm_head.weight is model.model.embed_tokens.weight,
        "weights_differ_from_single_process": [],
    }
    for name, param in params.items():
        with deepspeed.zero.GatheredParameters([param]):
            if not torch.equal(param.data, reference[name]):
                report["weights_differ_from_single_process"].append(name)
    if "bf16" in sys.argv:
        report.update(bf16_masters(strategy, model, reference))
    return report


def bf16_masters(strategy, model, reference) -> dict:
    """Force DeepSpeed's bf16 path on CPU; the fp32 masters must be the weights as built."""
    deepspeed = import_deepspeed()
    strategy.dtype = torch.bfloat16
    module = strategy.prepare(CausalLMWithLoss(model, loss_fn=None), ())
    strategy.build_optimizer(module, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-5))
    differ = []
    for name, param in model.named_parameters():
        master = deepspeed.utils.safe_get_full_fp32_param(param)
        if not torch.equal(master, reference[name]):
            differ.append(name)
    registered = getattr(module.module, "_external_params", {})
    return {"lm_head_registered": id(model.lm_head.weight) in registered,
            "compute_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
            "masters_differ_from_fp32_build": differ}


if __name__ == "__main__":
    args = [a for a in sys.argv[2:] if a != "bf16"]
    main(Path(sys.argv[1]), args)
