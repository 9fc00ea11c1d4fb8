"""Where the checkpoints a model config names are: a local directory, or a Hugging Face hub repository.

Checked before anything is built (train/preflight.py), in a second: when the hub cannot be reached,
transformers retries each file five times (about a minute) and the error arrives inside Hydra's
"Error in call to target" wrapper. Here a wrong or unreachable `model.pretrained` (or
`model.tokenizer`, `model.processor`, `model.vision_lm`, `model.audio_encoder`) is one line naming
the id, where it was looked for, and what to do. huggingface_hub is imported only for a hub id.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

# model keys that name a checkpoint (or its tokenizer / processor) by local path or hub id
CHECKPOINT_KEYS = ("pretrained", "tokenizer", "processor", "vision_lm", "audio_encoder")
# a file every model / tokenizer / processor repository has: its presence in the hub cache = cached
CACHE_PROBES = ("config.json", "tokenizer_config.json")
HUB_TIMEOUT_S = 10.0


def check_model_sources(model: DictConfig) -> None:
    """ValueError (one line) for the first checkpoint the model config names that cannot be found."""
    for key in CHECKPOINT_KEYS:
        ref = model.get(key)
        if isinstance(ref, str):
            locate(f"model.{key}", ref)


def locate(key: str, ref: str) -> None:
    """`ref` is a local directory, or a hub id (`org/name`) in the local hub cache or on a reachable hub."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ValueError(f"{key}={ref!r} is a file; give the checkpoint's directory (the one holding config.json) "
                         "or a hub id such as Qwen/Qwen2.5-0.5B-Instruct")
    if not is_hub_id(ref):
        raise ValueError(f"{key}={ref!r}: no such local directory (a relative path starts at the working directory, "
                         f"{Path.cwd()}), and not a hub id (org/name); give a checkpoint directory or a hub id such "
                         "as Qwen/Qwen2.5-0.5B-Instruct")
    _locate_on_hub(key, ref)


def is_hub_id(ref: str) -> bool:
    """`org/name` as the hub spells repository ids (huggingface_hub's own rule), not a path."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if ref.count("/") != 1:
        return False
    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return True


def _locate_on_hub(key: str, ref: str) -> None:
    from huggingface_hub import constants, model_info
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    cached = in_hub_cache(ref)
    if constants.HF_HUB_OFFLINE:
        if not cached:
            raise ValueError(f"{key}={ref!r}: not a local directory, so looked up on the Hugging Face hub, but "
                             f"HF_HUB_OFFLINE=1 and it is not in the local hub cache ({constants.HF_HUB_CACHE}); "
                             f"download it where there is network (hf download {ref}) or give a local checkpoint directory")
        return
    try:
        model_info(ref, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return  # it exists; access (a token) is for transformers to report
    except RepositoryNotFoundError:
        raise ValueError(f"{key}={ref!r}: no such repository on the Hugging Face hub ({constants.ENDPOINT}), or a "
                         "private one without a token (hf auth login); check the id, or give a local checkpoint "
                         "directory") from None
    except HfHubHTTPError:
        return  # the hub answered: transformers reports what it says
    except Exception as err:  # no network, DNS, proxy, timeout
        fix = ("it is in the local hub cache: run with HF_HUB_OFFLINE=1 to use it" if cached else
               f"give a local checkpoint directory, or download it where there is network (hf download {ref}) "
               "and run with HF_HUB_OFFLINE=1")
        raise ValueError(f"{key}={ref!r}: not a local directory, so looked up on the Hugging Face hub, which cannot "
                         f"be reached from here ({constants.ENDPOINT}: {type(err).__name__}: {err}); {fix}") from None


def in_hub_cache(ref: str) -> bool:
    """Whether the hub cache holds `ref` (any of CACHE_PROBES), by huggingface_hub's own lookup."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(ref, name), str) for name in CACHE_PROBES)
