from pathlib import Path

import pytest
import torch

GPU_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    # This hook sees every collected test: mark (and, without CUDA, skip) only those under tests/gpu/.
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if GPU_DIR in Path(item.fspath).parents:
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(skip)
