"""Load paths read plain data only, and remote code runs only when the config says so.

The "evil" objects below unpickle to `open(marker, "w")`: loading one with pickle creates the
marker file, so a test can tell a refused load from one that ran the object's code.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf
from torch.distributed.checkpoint import FileSystemReader

from lmms_engine.checkpoint.manager import COMPLETE_MARKER, load_checkpoint
from lmms_engine.checkpoint.safe_load import (
    SafeFileSystemReader,
    UnsafeCheckpointError,
    dcp_load,
    deepspeed_weights_only,
)
from tests.conftest import CONF_DIR, compose_config

MODEL_PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))


class Evil:
    """Unpickles to open(marker, "w"): proof that a load ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


# ---- checkpoints: DCP (model + optimizer), train state, DeepSpeed ----

@pytest.fixture
def dcp_checkpoint(tmp_path) -> Path:
    path = tmp_path / "ckpt"
    dcp.save({"w": torch.arange(6.0), "group": {"lr": 1e-3, "betas": [0.9, 0.95], "name": "decay"}}, checkpoint_id=path)
    return path


def test_safe_reader_reads_the_same_metadata_as_torch(dcp_checkpoint):
    ours, theirs = SafeFileSystemReader(dcp_checkpoint), FileSystemReader(dcp_checkpoint)
    ours.reset(), theirs.reset()
    assert ours.read_metadata().state_dict_metadata == theirs.read_metadata().state_dict_metadata
    state = {"w": torch.zeros(6), "group": {"lr": 0.0, "betas": [0.0, 0.0], "name": ""}}
    dcp_load(state, dcp_checkpoint)
    assert torch.equal(state["w"], torch.arange(6.0)) and state["group"] == {"lr": 1e-3, "betas": [0.9, 0.95],
                                                                            "name": "decay"}


def test_pickled_object_in_dcp_metadata_is_refused(dcp_checkpoint, tmp_path):
    marker = tmp_path / "ran"
    (dcp_checkpoint / ".metadata").write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata: global io\.open is not allowed"):
        dcp_load({"w": torch.zeros(6)}, dcp_checkpoint)
    assert not marker.exists()


def test_pickled_object_in_a_dcp_entry_is_refused(tmp_path):
    """torch's own dcp.load unpickles non-tensor entries with weights_only=False (it runs the
    object's code); our load refuses the entry."""
    marker, path = tmp_path / "ran", tmp_path / "ckpt"
    dcp.save({"w": torch.ones(2), "extra": Evil(marker)}, checkpoint_id=path)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load checkpoint entry 'extra'"):
        dcp_load({"w": torch.zeros(2), "extra": None}, path)
    assert not marker.exists()
    dcp.load({"w": torch.zeros(2), "extra": None}, checkpoint_id=path)  # stock torch: the hole we close
    assert marker.exists()


def test_a_checkpoint_of_another_model_is_refused_in_one_line_naming_keys(tmp_path):
    """Resuming with the wrong model: one line naming the checkpoint and the keys, not DCP's RuntimeError."""
    path = tmp_path / "ckpt"
    dcp.save({"model": torch.nn.Linear(4, 3).state_dict()}, checkpoint_id=path)
    other = {"model": {"weight": torch.zeros(3, 5), "bias": torch.zeros(3), "visual.proj": torch.zeros(2)}}
    with pytest.raises(ValueError) as err:
        dcp_load(other, path)
    assert str(err.value) == (f"checkpoint {path} was not written by this run's model: 1 of its weights are not in the "
                              "checkpoint (visual.proj); 1 have other shapes there (weight); resume with the model "
                              "(model=... and its overrides) that wrote it")


class _NoModelStrategy:
    rank = 0

    def load_model_optimizer(self, path, module, optimizer):
        pass


def test_train_state_with_a_pickled_object_is_refused(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "step_1"
    path.mkdir()
    (path / COMPLETE_MARKER).write_text("ok\n")
    torch.save({"step": 1, "rng": Evil(marker)}, path / "train_state_rank0.pt")
    with pytest.raises(UnsafeCheckpointError, match="train_state_rank0.pt: it holds an object that is not plain data"):
        load_checkpoint(path, None, None, _NoModelStrategy())
    assert not marker.exists()


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed not installed")
def test_deepspeed_checkpoint_files_load_weights_only(tmp_path):
    """While resuming, DeepSpeed's checkpoint engine reads with weights_only=True plus an allowlist
    of the DeepSpeed classes its ZeRO files hold; anything else is refused."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    class FakeEngine:
        checkpoint_engine = TorchCheckpointEngine()

    good, bad, marker = tmp_path / "good.pt", tmp_path / "bad.pt", tmp_path / "ran"
    torch.save({"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients,
                "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}], "fp32": torch.ones(4)}, good)
    torch.save({"fp32": torch.ones(4), "x": Evil(marker)}, bad)
    engine = FakeEngine()
    with deepspeed_weights_only(engine):
        assert torch.equal(engine.checkpoint_engine.load(str(good), map_location="cpu")["fp32"], torch.ones(4))
        with pytest.raises(UnsafeCheckpointError, match="bad.pt"):
            engine.checkpoint_engine.load(str(bad), map_location="cpu")
    assert not marker.exists()
    assert "load" not in vars(engine.checkpoint_engine)  # DeepSpeed's own load is back afterwards


def _unsafe_loads(source: str) -> list[int]:
    """Lines of calls that may unpickle: pickle.load(s), torch.load without weights_only=True,
    np.load with allow_pickle=True."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        kwargs = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
        if ((owner == "pickle" and node.func.attr in ("load", "loads"))
                or (owner == "torch" and node.func.attr == "load" and kwargs.get("weights_only") is not True)
                or (owner in ("np", "numpy") and node.func.attr == "load" and kwargs.get("allow_pickle") is True)):
            lines.append(node.lineno)
    return lines


def test_every_load_in_the_package_reads_plain_data():
    """A source audit of lmms_engine/: no call that could unpickle a file."""
    root = Path(__file__).resolve().parents[2] / "lmms_engine"
    offenders = {str(p.relative_to(root)): _unsafe_loads(p.read_text()) for p in root.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert _unsafe_loads("torch.load(f)\npickle.loads(b)\nnp.load(f, allow_pickle=True)\n") == [1, 2, 3]


# ---- token caches ----

def test_cache_file_with_a_pickled_object_is_refused(tmp_path):
    from lmms_engine.data.cache import load_tokenized

    marker, cache_file = tmp_path / "ran", tmp_path / "text-0123.npz"
    evil = np.empty(1, dtype=object)
    evil[0] = Evil(marker)
    np.savez(cache_file, input_ids=evil, labels=evil)
    assert load_tokenized(cache_file) is None  # treated as unreadable: rebuilt from the source
    assert not marker.exists()


# ---- trust_remote_code ----

@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_every_model_preset_has_trust_remote_code_off(preset):
    model = compose_config(f"model={preset}", shrink=False).model
    assert "trust_remote_code" in model and model.trust_remote_code is False
    builder = inspect.signature(get_method(model._target_)).parameters
    assert builder["trust_remote_code"].default is False


def _spy_from_pretrained(monkeypatch) -> list[tuple[str, dict]]:
    """Record every from_pretrained call that lmms_engine code makes (class name, kwargs)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer, PreTrainedModel

    calls = []
    for owner in (AutoConfig, AutoTokenizer, AutoProcessor, AutoModelForCausalLM, PreTrainedModel):
        defining = next(c for c in owner.__mro__ if "from_pretrained" in vars(c))
        func = vars(defining)["from_pretrained"].__func__

        def spy(cls, *args, __func=func, **kwargs):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("lmms_engine"):
                calls.append((cls.__name__, kwargs))
            return __func(cls, *args, **kwargs)

        monkeypatch.setattr(defining, "from_pretrained", classmethod(spy))
    return calls


def _saved_preset(preset: str, folder: Path) -> dict:
    """Build the tiny preset, save its model and tokenizer / processor to `folder`; return its config."""
    node = OmegaConf.load(Path(CONF_DIR) / "model" / f"{preset}.yaml")
    bundle = instantiate(node, _convert_="all")
    bundle.model.save_pretrained(folder)
    bundle.artifacts().save_pretrained(folder)
    return OmegaConf.to_container(node)


@pytest.mark.parametrize("preset", ["tiny", "tiny_qwen2_5_vl", "tiny_qwen2_audio", "tiny_omni"])
@pytest.mark.parametrize("trust", [False, True])
def test_from_pretrained_gets_the_configured_trust_remote_code(preset, trust, tmp_path, monkeypatch):
    node = _saved_preset(preset, tmp_path)
    calls = _spy_from_pretrained(monkeypatch)
    node.update(pretrained=str(tmp_path), trust_remote_code=trust)
    node.pop("config", None)
    instantiate(OmegaConf.create(node), _convert_="all")
    assert calls, "the build loaded nothing from model.pretrained"
    assert [(name, kwargs.get("trust_remote_code", "missing")) for name, kwargs in calls] == [
        (name, trust) for name, _ in calls]
