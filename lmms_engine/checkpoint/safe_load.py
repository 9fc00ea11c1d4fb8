"""Loading checkpoints without unpickling arbitrary objects.

A checkpoint is a file someone may hand you. Unpickling lets a file run code, so every load path
here reads plain data only:
- DCP (torch.distributed.checkpoint): torch reads the `.metadata` file with `pickle.load` and the
  non-tensor entries (optimizer param groups) with `torch.load(weights_only=False)`. SafeFileSystemReader
  unpickles the metadata with an allowlist of DCP's own metadata classes; WeightsOnlyLoadPlanner reads
  the entries with `torch.load(weights_only=True)`.
- DeepSpeed reads its files with `torch.load(weights_only=False)`: load_weights_only() is installed
  as its checkpoint engine's load while we resume, with an allowlist of the few DeepSpeed classes
  its ZeRO files hold.
- Train state files: `torch.load(weights_only=True)` (checkpoint/manager.py); token caches:
  `np.load(allow_pickle=False)` (data/cache.py).
A refused file raises ValueError naming the file and the object it would have created.
"""

from __future__ import annotations

import contextlib
import io
import pickle
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta

from lmms_engine import compat

DCP_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
DCP_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # layouts are pickled as _get_layout("torch.strided")
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
}


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds a pickled object that is not plain data: not loaded."""


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata: its own dataclasses, tensor sizes, dtypes and layouts, nothing else."""

    def find_class(self, module: str, name: str):
        if module == DCP_METADATA_MODULE or (module, name) in DCP_METADATA_GLOBALS or _is_dtype(module, name):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in checkpoint metadata")


def _is_dtype(module: str, name: str) -> bool:
    return module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)


class SafeFileSystemReader(FileSystemReader):
    """FileSystemReader whose metadata is unpickled with an allowlist (see module docstring)."""

    refused: UnsafeCheckpointError | None = None  # DCP turns the error into an AssertionError's text

    def read_metadata(self, *args, **kwargs):
        rank = kwargs.get("rank")
        path = Path(self.path) / (".metadata" if rank is None else f"__{rank}.metadata")
        with open(path, "rb") as f:
            try:
                metadata = _MetadataUnpickler(f).load()
            except pickle.UnpicklingError as err:
                self.refused = UnsafeCheckpointError(f"refusing to load checkpoint metadata {path}: {err}")
                raise self.refused from None
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, reading non-tensor entries with torch.load(weights_only=True)
    (its own load_bytes, which this replaces, uses weights_only=False)."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(f"refusing to load checkpoint entry {fqn!r}: {_first_line(err)}") from None
        if self.flatten_state_dict:  # as DefaultLoadPlanner.load_bytes does
            compat.dcp_set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def dcp_load(state: dict, path: Path) -> None:
    """torch.distributed.checkpoint.load of `path` into `state`, reading plain data only."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    reader = SafeFileSystemReader(path)
    if "model" in state:
        check_model_fits(state["model"], reader.read_metadata().state_dict_metadata, path)
    try:
        dcp.load(state, checkpoint_id=path, storage_reader=reader, planner=WeightsOnlyLoadPlanner())
    except CheckpointException as err:  # DCP wraps what a rank raised: a refusal is re-raised as itself
        refused = [exc for exc, _ in err.failures.values() if isinstance(exc, UnsafeCheckpointError)]
        if reader.refused is not None or refused:
            raise reader.refused or refused[0] from None
        raise


def check_model_fits(model_state: dict, saved: dict, path: Path, shown: int = 3) -> None:
    """One-line ValueError when the checkpoint at `path` (its DCP metadata entries `saved`, named
    `model.<fqn>`) lacks weights of this run's model or holds them in other shapes (DCP would raise a
    long RuntimeError naming one key, or load nothing useful)."""
    expected = {f"model.{name}": value for name, value in model_state.items()}
    missing = sorted(name for name in expected if name not in saved)
    reshaped = sorted(name for name, value in expected.items() if name in saved and isinstance(value, torch.Tensor)
                      and tuple(getattr(saved[name], "size", value.shape)) != tuple(value.shape))
    if not missing and not reshaped:
        return
    extra = sorted(name for name in saved if name.startswith("model.") and name not in expected)
    parts = [f"{len(missing)} of its weights are not in the checkpoint ({_some(missing, shown)})" if missing else "",
             f"{len(reshaped)} have other shapes there ({_some(reshaped, shown)})" if reshaped else "",
             f"the checkpoint has {len(extra)} weights this model lacks ({_some(extra, shown)})" if extra else ""]
    raise ValueError(f"checkpoint {path} was not written by this run's model: " + "; ".join(p for p in parts if p)
                     + "; resume with the model (model=... and its overrides) that wrote it")


def _some(names: list[str], shown: int) -> str:
    return ", ".join(name.removeprefix("model.") for name in names[:shown]) + (", ..." if len(names) > shown else "")


def load_weights_only(path, map_location=None, safe_globals: list | None = None):
    """torch.load(weights_only=True), allowing `safe_globals` too; UnsafeCheckpointError otherwise."""
    with torch.serialization.safe_globals(safe_globals or []):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(f"refusing to load {path}: it holds an object that is not plain data "
                                        f"({_first_line(err)})") from None


@contextlib.contextmanager
def deepspeed_weights_only(engine):
    """While inside, the DeepSpeed engine reads its checkpoint files with load_weights_only."""
    checkpoint_engine = compat.deepspeed_checkpoint_engine(engine)
    allowed = compat.deepspeed_checkpoint_classes()

    def load(path, map_location=None):
        return load_weights_only(path, map_location, allowed)

    checkpoint_engine.load = load  # an instance attribute: shadows the class's pickle-based load
    try:
        yield
    finally:
        del checkpoint_engine.load


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "Unsupported" in line]
    return lines[0] if lines else str(err).splitlines()[0]
