"""Each private library API in lmms_engine/compat.py, checked against the installed version: a
failure here names the entry an upgrade broke (see compat.py's docstring)."""

from __future__ import annotations

import importlib.util
import inspect

import pytest
import torch
from torch import nn

from lmms_engine import compat
from lmms_engine.names import unwrapped_name

# ---------------------------------------------------------------- torch


def test_torch_checkpoint_wrapper_prefix_is_what_wrapped_names_carry():
    outer = nn.Sequential(nn.Linear(2, 2))
    outer.register_module("0", compat.checkpoint_wrapper(outer[0]))
    names = [name for name, _ in outer.named_parameters()]
    assert names == [f"0.{compat.CHECKPOINT_WRAPPER_PREFIX}weight", f"0.{compat.CHECKPOINT_WRAPPER_PREFIX}bias"], (
        f"compat.CHECKPOINT_WRAPPER_PREFIX / compat.checkpoint_wrapper: wrapped names are now {names}")
    assert list(outer.state_dict()) == ["0.weight", "0.bias"], "compat.checkpoint_wrapper: its state_dict hook changed"
    assert [unwrapped_name(n, prefixes=()) for n in names] == ["0.weight", "0.bias"]


def test_torch_compile_prefix_is_what_compiled_module_names_carry():
    compiled = torch.compile(nn.Linear(2, 2))
    names = [name for name, _ in compiled.named_parameters()]
    assert names == [f"{compat.COMPILE_WRAPPER_PREFIX}weight", f"{compat.COMPILE_WRAPPER_PREFIX}bias"], (
        f"compat.COMPILE_WRAPPER_PREFIX: torch.compile's wrapper names are now {names}")


def test_torch_dynamo_counters_count_graphs_and_breaks():
    torch.compiler.reset()
    compat.dynamo_counters().clear()

    def fn(x):
        y = x * 2
        torch._dynamo.graph_break()  # one break: two graphs
        return y + 1

    compiled = torch.compile(fn, backend="eager")
    assert torch.equal(compiled(torch.ones(3)), torch.full((3,), 3.0))
    counters = compat.dynamo_counters()
    assert counters["stats"]["unique_graphs"] == 2, f"compat.dynamo_counters: stats are now {dict(counters['stats'])}"
    assert sum(counters["graph_break"].values()) == 1, f"compat.dynamo_counters: breaks are {dict(counters['graph_break'])}"
    torch.compiler.reset()


def test_torch_non_persistent_buffer_names():
    module = nn.Module()
    module.register_buffer("kept", torch.zeros(1))
    module.register_buffer("inv_freq", torch.zeros(1), persistent=False)
    assert compat.non_persistent_buffer_names(module) == {"inv_freq"}, "compat.non_persistent_buffer_names"


def test_torch_dcp_set_element_sets_a_flattened_path():
    root = {"optim": {"param_groups": [{"lr": 1.0}]}}
    compat.dcp_set_element(root, ("optim", "param_groups", 0, "lr"), 2.0)
    assert root == {"optim": {"param_groups": [{"lr": 2.0}]}}, "compat.dcp_set_element"


def test_torch_dcp_load_planner_has_what_load_bytes_reads():
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import Metadata

    planner = DefaultLoadPlanner()
    planner.set_up_planner({"w": torch.zeros(1)}, Metadata(state_dict_metadata={}), is_coordinator=True)
    missing = [a for a in compat.DCP_LOAD_PLANNER_ATTRIBUTES if not hasattr(planner, a)]
    assert not missing, f"compat.DCP_LOAD_PLANNER_ATTRIBUTES: DefaultLoadPlanner lacks {missing}"
    assert "load_bytes" in vars(DefaultLoadPlanner), "compat: DefaultLoadPlanner.load_bytes (safe_load overrides it)"


# ---------------------------------------------------------------- transformers


def test_clear_dtensor_caches_frees_the_mesh_a_sharded_model_used(tmp_path):
    """After fully_shard + a step, DTensor's caches are what keeps the DeviceMesh (and its groups)."""
    import gc
    import weakref

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        model = fully_shard(nn.Linear(4, 4), mesh=mesh)
        model(torch.ones(2, 4)).sum().backward()
        mesh_ref = weakref.ref(mesh)
        del model, mesh
        gc.collect()
        assert mesh_ref() is not None  # the test sees the leak it fixes
        compat.clear_dtensor_caches()
        gc.collect()
        assert mesh_ref() is None
    finally:
        dist.destroy_process_group()


def test_qwen2_audio_process_audio_is_the_processors_expansion():
    process = compat.qwen2_audio_process_audio()
    assert callable(process), "transformers: Qwen2AudioProcessor._process_audio is gone"
    assert list(inspect.signature(process).parameters)[0] == "self"


def test_submodule_from_config_builds_a_sub_model_with_its_attention_implementation():
    from transformers import Qwen2AudioEncoderConfig
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

    config = Qwen2AudioEncoderConfig(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                                     num_mel_bins=16, max_source_positions=8)
    encoder = compat.submodule_from_config(Qwen2AudioEncoder, config)
    assert isinstance(encoder, Qwen2AudioEncoder), "transformers: PreTrainedModel._from_config changed"
    assert encoder.config._attn_implementation in ("sdpa", "eager")
    assert encoder.conv1.in_channels == 16
    as_fp32 = compat.submodule_from_config(Qwen2AudioEncoder, config, dtype=torch.float32)
    assert {p.dtype for p in as_fp32.parameters()} == {torch.float32}


def test_config_attn_implementation_is_what_the_model_runs():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=16)
    model = Qwen2ForCausalLM(config)
    model.set_attn_implementation("eager")
    assert compat.config_attn_implementation(model.config) == "eager", "transformers: config._attn_implementation changed"
    compat.set_config_attn_implementation(model.config, "sdpa")
    assert compat.config_attn_implementation(model.config) == "sdpa"


# ---------------------------------------------------------------- liger-kernel


def test_liger_instance_patches_rebind_forward():
    pytest.importorskip("liger_kernel")
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm

    norm = Qwen2RMSNorm(8, eps=1e-6)
    compat.liger_patch_rms_norm(norm, eps=1e-6)
    assert "forward" in vars(norm), "liger-kernel: monkey_patch._patch_rms_norm_module changed"
    mlp = Qwen2MLP(Qwen2Config(hidden_size=8, intermediate_size=16))
    compat.liger_patch_swiglu(mlp)
    assert "forward" in vars(mlp), "liger-kernel: monkey_patch._patch_swiglu_module changed"
    assert torch.is_tensor(norm.weight)


# ---------------------------------------------------------------- DeepSpeed

needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="the deepspeed extra")


@needs_deepspeed
@pytest.mark.parametrize("index", [0, 1], ids=["zero12", "zero3"])
def test_deepspeed_zero_optimizers_hold_what_release_gradients_touches(index):
    cls = compat.deepspeed_zero_optimizer_classes()[index]
    source = inspect.getsource(cls)
    assert "self.clip_grad = " in source, f"compat.deepspeed_set_clip_threshold: {cls.__name__} has no clip_grad"
    assert "self.averaged_gradients = " in source, f"compat.deepspeed_release_gradients: {cls.__name__}.averaged_gradients"
    assert callable(getattr(cls, "reset_cpu_buffers", None)), f"compat.deepspeed_release_gradients: {cls.__name__}.reset_cpu_buffers"
    if index == 0:
        assert callable(getattr(cls, "_release_preflattened_grad_buffers", None)), (
            "compat.deepspeed_release_gradients: DeepSpeedZeroOptimizer._release_preflattened_grad_buffers")
        assert "self.cpu_offload = " in source, "compat.deepspeed_release_gradients: DeepSpeedZeroOptimizer.cpu_offload"


class _FakeZeroOptimizer:
    """Stands for a ZeRO-1/2 optimizer with CPU offload: what deepspeed_release_gradients clears."""

    def __init__(self):
        self.clip_grad, self.cpu_offload = 0.0, True
        self.averaged_gradients = {0: [torch.ones(2)], 1: [torch.ones(2)]}
        self.calls = []

    def _release_preflattened_grad_buffers(self):
        self.calls.append("flat")

    def reset_cpu_buffers(self):
        self.calls.append("cpu")


def test_deepspeed_release_gradients_clears_partitions_and_buffers():
    optimizer = _FakeZeroOptimizer()
    compat.deepspeed_release_gradients(optimizer)
    assert optimizer.averaged_gradients == {0: None, 1: None}
    assert optimizer.calls == ["flat", "cpu"]


def test_deepspeed_set_clip_threshold_refuses_an_optimizer_without_clip_grad():
    optimizer = _FakeZeroOptimizer()
    compat.deepspeed_set_clip_threshold(optimizer, 1.5)
    assert optimizer.clip_grad == 1.5
    with pytest.raises(AttributeError, match="SGD has no clip_grad"):
        compat.deepspeed_set_clip_threshold(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 1.0)


@needs_deepspeed
def test_deepspeed_checkpoint_classes_import():
    names = [cls.__name__ for cls in compat.deepspeed_checkpoint_classes()]
    assert names == ["LossScaler", "DynamicLossScaler", "ZeroStageEnum", "fragment_address", "PosixPath"]


@needs_deepspeed
def test_deepspeed_engine_has_a_checkpoint_engine_with_load():
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.engine import DeepSpeedEngine

    assert "self.checkpoint_engine = " in inspect.getsource(DeepSpeedEngine), "compat.deepspeed_checkpoint_engine"
    assert list(inspect.signature(TorchCheckpointEngine.load).parameters)[:3] == ["self", "path", "map_location"], (
        "compat.deepspeed_checkpoint_engine: TorchCheckpointEngine.load(path, map_location) changed")


@needs_deepspeed
def test_deepspeed_zero3_parameter_attributes():
    from deepspeed.runtime.zero.partition_parameters import Init

    source = inspect.getsource(Init)
    assert "ds_tensor" in source, "compat.zero3_partition: zero.Init no longer sets param.ds_tensor"
    assert "ds_id" in source, "compat.is_zero3_param: zero.Init no longer sets param.ds_id"
    plain = nn.Parameter(torch.zeros(1))
    assert compat.zero3_partition(plain) is None and not compat.is_zero3_param(plain)



@pytest.fixture
def forward_stack():
    """ZeRO-3's module-global forward stack, emptied for the test and restored after."""
    from deepspeed.runtime.zero import parameter_offload

    stack = parameter_offload.FWD_MODULE_STACK
    saved = list(stack)
    stack.clear()
    yield stack
    stack[:] = saved


@needs_deepspeed
def test_deepspeed_forget_modules_drops_the_model_and_its_submodules_in_place(forward_stack):
    from deepspeed.runtime.zero.parameter_offload import DeepSpeedZeRoOffload

    assert "FWD_MODULE_STACK.append(self.module)" in inspect.getsource(DeepSpeedZeRoOffload.setup_zero_stage3_hooks), (
        "compat.deepspeed_forget_modules: ZeRO-3 no longer pushes its model on FWD_MODULE_STACK")
    model, other = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2))), nn.Linear(2, 2)
    forward_stack.extend([model, other, model[1][0]])  # a forward that raised leaves submodules too
    assert compat.deepspeed_forget_modules(model) == 2
    assert len(forward_stack) == 1 and forward_stack[0] is other
    assert compat.deepspeed_forget_modules(model) == 0


class _EngineWithHooks:
    """Stands for a DeepSpeedEngine: forward pre / post hooks on its model, closures over itself."""

    def __init__(self, module: nn.Module):
        self.module, self.calls = module, []
        self.module_forward_pre_hook = module.register_forward_pre_hook(lambda m, a: self.calls.append("pre"))
        self.module_forward_post_hook = module.register_forward_hook(lambda m, a, o: self.calls.append("post"))


@needs_deepspeed
def test_deepspeed_remove_forward_hooks_detaches_the_engine_from_its_model():
    from deepspeed.runtime.engine import DeepSpeedEngine

    source = inspect.getsource(DeepSpeedEngine)
    for name in ("module_forward_pre_hook", "module_forward_post_hook"):
        assert f"self.{name} = self._create_{name}()" in source, f"compat.deepspeed_remove_forward_hooks: engine.{name}"
    model = nn.Linear(2, 2)
    engine = _EngineWithHooks(model)
    model(torch.ones(1, 2))
    compat.deepspeed_remove_forward_hooks(engine)
    model(torch.ones(1, 2))
    assert engine.calls == ["pre", "post"]  # the second forward ran no hook
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert engine.module_forward_pre_hook is None and engine.module_forward_post_hook is None
    compat.deepspeed_remove_forward_hooks(engine)  # a second call is a no-op


# ---- Hydra ----

def test_hydra_args_parser_separates_overrides_from_flags():
    args, _ = compat.hydra_args_parser().parse_known_args(["--config-name", "x", "model=tiny", "optim.lr=1e-5"])
    assert args.config_name == "x" and list(args.overrides) == ["model=tiny", "optim.lr=1e-5"]


def test_torch_checkpoint_wrapper_runs_a_given_checkpoint_fn_with_the_module_and_its_arguments():
    calls = []

    def checkpoint_fn(module, *args, **kwargs):
        calls.append((module, args, kwargs))
        return module(*args, **kwargs)

    inner = nn.Linear(2, 2)
    wrapped = compat.checkpoint_wrapper(inner, checkpoint_fn=checkpoint_fn)
    x = torch.ones(1, 2)
    torch.testing.assert_close(wrapped(x), inner(x))
    assert len(calls) == 1 and calls[0][0] is inner and calls[0][1][0] is x and calls[0][2] == {}, \
        "compat.checkpoint_wrapper: torch's wrapper no longer calls checkpoint_fn(module, *args, **kwargs)"
    assert list(wrapped.state_dict()) == ["weight", "bias"]


def test_torch_is_checkpoint_wrapper_knows_what_checkpoint_wrapper_returns():
    wrapped = compat.checkpoint_wrapper(nn.Linear(2, 2))
    assert compat.is_checkpoint_wrapper(wrapped)
    assert not compat.is_checkpoint_wrapper(nn.Linear(2, 2))


def test_fa4_backward_kernel_takes_the_arguments_compat_passes():
    """compat.fa4_varlen_backward calls FA4's `_flash_attn_bwd` positionally for its first eight
    parameters (the gradients themselves are checked on the GPU: tests/gpu/test_fa4_gpu.py)."""
    interface = pytest.importorskip("flash_attn.cute.interface", reason="flash-attn-4 is a GPU extra")
    names = list(inspect.signature(interface._flash_attn_bwd).parameters)
    assert names[:8] == ["q", "k", "v", "out", "dout", "lse", "softmax_scale", "causal"]
    assert {"cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"} <= set(names)
