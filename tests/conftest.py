"""Shared fixtures: seeded RNG, the embedded datasets, and the optional larger real files of ../shared/datasets.

The default test run needs nothing beside the repository. Tests that read the larger real files (the full MNIST
t10k with its official md5, the train5k source of mnist-mini) carry `@pytest.mark.shared_data`; they run when
the folder is found (`$CLEARSIGHT_SHARED_DATA`, or shared/datasets beside the checkout) and are skipped with
the reason shown otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import clearsight as cs


def _shared_datasets() -> Path | None:
    """The read-only real data beside the repository (MNIST t10k, train5k), or None when it is not there."""
    env = os.environ.get("CLEARSIGHT_SHARED_DATA")
    candidates = [Path(env)] if env else [p / "shared" / "datasets" for p in Path(__file__).resolve().parents]
    for c in candidates:
        if (c / "mnist" / "t10k-images-idx3-ubyte.gz").exists():
            return c
    if env:  # pointed somewhere on purpose: a wrong path is an error, not a silent skip
        raise RuntimeError(f"CLEARSIGHT_SHARED_DATA={env} holds no mnist/t10k-images-idx3-ubyte.gz")
    return None


_SHARED = _shared_datasets()
SKIP_REASON = ("needs the real files of ../shared/datasets (MNIST t10k, train5k); set CLEARSIGHT_SHARED_DATA "
               "to that folder to run it")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("shared_data") is not None and _SHARED is None:
        pytest.skip(SKIP_REASON)


@pytest.fixture
def shared_data(request: pytest.FixtureRequest) -> Path:
    # only marked tests may read the folder, so the default run can never come to depend on it unseen
    if request.node.get_closest_marker("shared_data") is None:
        raise RuntimeError(f"{request.node.nodeid} uses shared_data without @pytest.mark.shared_data")
    assert _SHARED is not None  # unmarked use raised above; marked tests were skipped in setup
    return _SHARED


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def mnist_mini_test() -> cs.data.ArrayDataset:
    return cs.data.load("mnist-mini", split="test")


@pytest.fixture(scope="session")
def mnist_mini_train() -> cs.data.ArrayDataset:
    return cs.data.load("mnist-mini", split="train")
