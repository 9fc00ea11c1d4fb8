"""A model family is one entry: everything the framework knows about a family, named in one object.

Each family's own package (models/qwen2_5_vl/, models/qwen3_vl/, models/qwen2_audio/, models/omni/)
or module (models/qwen2.py, models/qwen3.py) defines its `FAMILY`; the registry (models/registry.py)
lists them. kernels/, data/, the config checks and the benchmarks ask an entry (through the
registry, by a model config's `_target_` or by a processor) and import no family class. What an
entry names:

  builder            import path of the builder, the `_target_` of its presets; returns a ModelBundle
                     (the model, its tokenizer / processor, decoder units, encoders, data extras)
  model_types        the checkpoint `model_type`s the builder accepts (model=auto reads them)
  presets            its conf/model presets, the CPU-sized one first; bench_preset: the shape the
                     GPU benchmarks measure by default
  media_kinds        what its models take besides text (config checks: the demo data that fits)
  builtin_processor  the download-free processor (a text family: tokenizer) for a preset's `config`
  encoders           hf config -> its ModalityEncoders (models/encoders.py): module, components,
                     placeholder ids, batch keys, embed / dummy, FLOPs, kernel hooks (varlen
                     attention classes, MLPs padded for tensor cores)
  liger              its instance-level Liger patch (registered by model type in kernels/liger.py);
                     None: liger-kernel's public `apply_liger_kernel_to_<model_type>`
  media              data-side rules of its processor beyond data/'s defaults (MediaRules)
  supports           sequence parallelism, FP8, torch.compile (Supports)

FLOPs: the decoder's (models/flops.py, the same formula for every decoder) plus each encoder's own
`flops` on its real items (ModelBundle.step_flops).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.utils import get_method

VISION = frozenset({"image", "video"})
AUDIO = frozenset({"audio"})


@dataclass(frozen=True)
class Supports:
    """Run features a family's models work with (the config checks refuse the others by name)."""

    sequence_parallel: bool = True  # parallel.sp_degree > 1: the decoder on a shard of each pack
    fp8: bool = True  # kernels.fp8: the decoder layers' linear projections in FP8
    compile: bool = True  # parallel.compile: decoder layers and encoder blocks torch.compiled
    note: str = ""  # why a feature is off (the config checks' message quotes it)


@dataclass(frozen=True)
class MediaRules:
    """How a family's processor turns media into tokens where data/'s defaults do not describe it.

    processor_classes: the processors (or their video processors / feature extractors) the rules
      belong to; the data side finds the rules of the processor it is given by these.
    video: an object with `settings(processor, tokenizer) -> dict` (extra MediaSettings fields),
      `measure(total_frames, fps, height, width, settings) -> dict` (MediaItem fields; ValueError
      naming the problem for an unusable video) and `placeholder_run(item, settings, tokenizer,
      frames)` (what one video placeholder becomes); None: data/media.py's default video rules.
    audio: an object with `name`, `context_frames` (mel frames past a clip's end its encoder reads)
      and `placeholder_count(mel_frames)` (tokens of a clip); None: no audio.
    """

    processor_classes: tuple[type, ...]
    video: Any = None
    audio: Any = None


@dataclass(frozen=True)
class ModelFamily:
    """One family's entry (see the module docstring)."""

    name: str
    builder: str
    model_types: tuple[str, ...]
    presets: tuple[str, ...]
    builtin_processor: Callable[[Mapping[str, Any]], Any]
    encoders: Callable[[Any], tuple] = lambda hf_config: ()
    media_kinds: frozenset[str] = frozenset()
    bench_preset: str | None = None
    liger: Callable | None = None
    media: MediaRules | None = None
    supports: Supports = field(default_factory=Supports)

    def build(self, **kwargs):
        """The family's ModelBundle: its builder called with `kwargs` (name, pretrained, config, ...)."""
        return get_method(self.builder)(**kwargs)

    def __str__(self) -> str:
        return self.builder
