"""models/locate.py: a wrong or unreachable model.pretrained answers in one line naming the id, where it
was looked for and what to do, before transformers retries five times. No network here: the hub's
answers are stood in for."""

from __future__ import annotations

import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.file_download import repo_folder_name

from lmms_engine.models.locate import locate

HUB_ID = "Qwen/Not-A-Model-0.5B"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _cache(hub_cache, repo_id: str) -> None:
    """`repo_id` as huggingface_hub's cache holds a downloaded snapshot."""
    repo = hub_cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")


def _unreachable(*args, **kwargs):
    raise ConnectionError("Name or service not known")


def test_a_local_directory_is_found(tmp_path):
    locate("model.pretrained", str(tmp_path))


def test_a_missing_local_path_is_named_as_such(tmp_path):
    with pytest.raises(ValueError) as err:
        locate("model.pretrained", str(tmp_path / "ckpt"))
    assert str(err.value).startswith(f"model.pretrained='{tmp_path / 'ckpt'}': no such local directory (a relative path "
                                     "starts at the working directory, ")


def test_offline_a_hub_id_outside_the_cache_says_so(hub_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError) as err:
        locate("model.pretrained", HUB_ID)
    assert str(err.value) == (f"model.pretrained='{HUB_ID}': not a local directory, so looked up on the Hugging Face "
                              f"hub, but HF_HUB_OFFLINE=1 and it is not in the local hub cache ({hub_cache}); download "
                              f"it where there is network (hf download {HUB_ID}) or give a local checkpoint directory")
    _cache(hub_cache, HUB_ID)
    locate("model.pretrained", HUB_ID)


def test_an_unreachable_hub_answers_at_once_with_what_to_do(hub_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "model_info", _unreachable)
    with pytest.raises(ValueError, match=r"which cannot be reached from here \(.*ConnectionError: Name or service not "
                                         r"known\); give a local checkpoint directory, or download it where there is "
                                         r"network \(hf download Qwen/Not-A-Model-0\.5B\) and run with HF_HUB_OFFLINE=1$"):
        locate("model.pretrained", HUB_ID)
    _cache(hub_cache, HUB_ID)
    with pytest.raises(ValueError, match=r"it is in the local hub cache: run with HF_HUB_OFFLINE=1 to use it$"):
        locate("model.pretrained", HUB_ID)
