"""Test-wide environment: offline, no analytics, a throw-away PREFECT_HOME (set before prefect loads)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from pipeline.orchestration import prefect_env

os.environ["HF_HUB_OFFLINE"] = "1"
# Several torch processes share 2 cores in some tests (torchrun, dvc subprocesses, a Prefect
# server): spinning OpenMP threads then slow everything down manyfold. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="vfmtok-prefect-"))
prefect_env.configure()

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def one_thread():
    """One torch thread in this process for the test: what runs beside it (torchrun ranks) or what
    it runs (tiny tensors) gains nothing from a second, and a busy second thread only contends."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
