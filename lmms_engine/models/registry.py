"""The model families this framework trains, keyed by a checkpoint's `model_type` (its config.json).

`model=auto model.pretrained=<path or hub id>` (conf/model/auto.yaml) reads that type and calls the
family's builder, so a user need not know the preset's name. A new family adds one line to FAMILIES
(or calls `register_family`); builders are named by import path and imported only when chosen, so
this module imports no family module (no import cycles, no cost for the families not used).
"""

from __future__ import annotations

import inspect
import logging

from hydra.utils import get_method
from transformers import PreTrainedConfig

log = logging.getLogger(__name__)

# FAMILIES: model_type -> the builder's import path; MEDIA_KINDS: what each builder's models take.
# Both live in a module that imports neither torch nor transformers (the entry point's checks use them).
from lmms_engine.models.families import AUDIO, FAMILIES, MEDIA_KINDS, VISION  # noqa: E402,F401


def register_family(model_type: str, builder: str) -> None:
    """Make `model=auto` build checkpoints of `model_type` with `builder` (an import path)."""
    if model_type in FAMILIES and FAMILIES[model_type] != builder:
        raise ValueError(f"model_type {model_type!r} is already registered to {FAMILIES[model_type]}")
    FAMILIES[model_type] = builder


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
