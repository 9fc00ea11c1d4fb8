"""The model families this framework trains: their entries, and model=auto.

Each family's `FAMILY` entry (models/family.py) lives in its own package, beside its builder. The
registry lists the families by their checkpoints' `model_type` (FAMILIES, one line per family) and
finds an entry from what the rest of the framework holds: a model config's `_target_` (the builder:
`family_of`), a media kind (`default_family`) or a processor (`media_rules`).

`model=auto model.pretrained=<path or hub id>` (conf/model/auto.yaml) reads the checkpoint's type and
calls the family's builder, so a user need not know the preset's name. A new family adds one line to
FAMILIES (or calls `register` / `register_family`); builders and entries are named by import path and
imported only when asked, so this module imports no family module (no import cycles, no cost for the
families not used).
"""

from __future__ import annotations

import importlib
import inspect
import logging

from hydra.utils import get_method
from transformers import PreTrainedConfig

from lmms_engine.models.family import MediaRules, ModelFamily

log = logging.getLogger(__name__)

# model_type -> the builder's import path, in the module that defines the family's FAMILY entry.
# Each builder takes (name, pretrained, <processor or tokenizer>, trust_remote_code, structure_only)
# and returns a ModelBundle.
FAMILIES: dict[str, str] = {
    "qwen2": "lmms_engine.models.qwen2.build_qwen2",
    "qwen2_5_vl": "lmms_engine.models.qwen2_5_vl.build_qwen2_5_vl",
    "qwen2_audio": "lmms_engine.models.qwen2_audio.build_qwen2_audio",
    "lmms_omni": "lmms_engine.models.omni.build_omni",
    "qwen3": "lmms_engine.models.qwen3.build_qwen3",
    "qwen3_vl": "lmms_engine.models.qwen3_vl.build_qwen3_vl",
}


def register_family(model_type: str, builder: str) -> None:
    """Make `model=auto` build checkpoints of `model_type` with `builder` (an import path)."""
    if model_type in FAMILIES and FAMILIES[model_type] != builder:
        raise ValueError(f"model_type {model_type!r} is already registered to {FAMILIES[model_type]}")
    FAMILIES[model_type] = builder


def register(family: ModelFamily) -> None:
    """List a family (one defined outside lmms_engine, say): each of its model types -> its builder."""
    for model_type in family.model_types:
        register_family(model_type, family.builder)


def family_of(target: str) -> ModelFamily | None:
    """The entry of the family whose builder is `target` (a model config's `_target_`): the FAMILY
    of the builder's module. None for a builder without one (model=auto's: the family is known only
    once the checkpoint is read)."""
    module_name = target.rpartition(".")[0]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    family = getattr(module, "FAMILY", None)
    return family if isinstance(family, ModelFamily) and family.builder == target else None


def families() -> list[ModelFamily]:
    """Every registered family's entry, in FAMILIES' order."""
    found = (family_of(builder) for builder in dict.fromkeys(FAMILIES.values()))
    return [family for family in found if family is not None]


def default_family(media_kinds: frozenset[str]) -> ModelFamily:
    """The first registered family whose models take exactly `media_kinds` besides text: what a
    tool (a benchmark, `lmms-data check`) uses when none is named."""
    for family in families():
        if family.media_kinds == media_kinds:
            return family
    raise ValueError(f"no registered model family takes {sorted(media_kinds) or 'text only'}")


def media_rules(processor) -> MediaRules | None:
    """The media rules of the family `processor` belongs to (its most specific class that a
    family's MediaRules names); None when no family names it (data/'s defaults apply)."""
    rules = {cls: family.media for family in families() if family.media for cls in family.media.processor_classes}
    return next((rules[cls] for cls in type(processor).__mro__ if cls in rules), None)


def checkpoint_model_type(pretrained: str, trust_remote_code: bool = False) -> str:
    """The `model_type` in the config.json of a local checkpoint folder or hub id."""
    try:
        # The raw dict, not AutoConfig: a type transformers does not know yet (a remote-code or
        # this project's own model) still has its model_type read, so it gets our message below.
        config, _ = PreTrainedConfig.get_config_dict(pretrained, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ValueError(f"model.pretrained={pretrained!r}: no readable config.json ({err})") from None
    if not config:
        raise ValueError(f"model.pretrained={pretrained!r}: no readable config.json (not a checkpoint folder)")
    if "model_type" not in config:
        raise ValueError(f"model.pretrained={pretrained!r}: its config.json has no model_type")
    return config["model_type"]


def builder_for(model_type: str, pretrained: str):
    if model_type not in FAMILIES:
        raise ValueError(f"model.pretrained={pretrained!r} is a {model_type!r} checkpoint; model=auto supports "
                         f"{', '.join(sorted(FAMILIES))}")
    return get_method(FAMILIES[model_type])


def build_auto(
    name: str,
    pretrained: str,
    processor: str | None = None,
    trust_remote_code: bool = False,
    structure_only: bool = False,
):
    """Build whichever family `pretrained` is (Qwen2 / Qwen2.5, Qwen2.5-VL, Qwen2-Audio, omni, ...).

    processor: hub id or local path of the processor (a text model: its tokenizer); None = the
      checkpoint's own.
    """
    model_type = checkpoint_model_type(pretrained, trust_remote_code)
    builder = builder_for(model_type, pretrained)
    log.info("model=auto: %s is a %r checkpoint -> %s", pretrained, model_type, FAMILIES[model_type])
    kwargs = {"name": name, "pretrained": pretrained, "trust_remote_code": trust_remote_code,
              "structure_only": structure_only}
    if processor is not None:
        kwargs[_processor_argument(builder, model_type)] = processor
    return builder(**kwargs)


def _processor_argument(builder, model_type: str) -> str:
    # Text builders take a tokenizer, multimodal ones a processor (which holds the tokenizer).
    params = inspect.signature(builder).parameters
    for key in ("processor", "tokenizer"):
        if key in params:
            return key
    raise ValueError(f"model.processor is set but the {model_type!r} builder takes no processor or tokenizer")
