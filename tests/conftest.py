"""Shared fixtures: seeded RNG, the real datasets of ../shared/datasets, small trained models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import clearsight as cs


def _shared_datasets() -> Path:
    """The read-only real data beside the repository (MNIST t10k, German Credit, Adult)."""
    env = os.environ.get("CLEARSIGHT_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [p / "shared" / "datasets" for p in Path(__file__).resolve().parents]
    for c in candidates:
        if (c / "mnist" / "t10k-images-idx3-ubyte.gz").exists():
            return c
    raise RuntimeError("cannot find the shared datasets folder (shared/datasets beside the repository); "
                       "set CLEARSIGHT_SHARED_DATA to its path")


SHARED = _shared_datasets()


@pytest.fixture
def shared_data() -> Path:
    return SHARED


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def mnist_mini_test() -> cs.data.ArrayDataset:
    return cs.data.load("mnist-mini", split="test")


@pytest.fixture(scope="session")
def mnist_mini_train() -> cs.data.ArrayDataset:
    return cs.data.load("mnist-mini", split="train")
