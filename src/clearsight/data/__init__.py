"""Datasets: `load(name, split)` returns an ArrayDataset of float32 inputs in [0, 1] and int64 labels.

Registered: mnist-mini (embedded, offline), mnist, fashion-mnist, cifar10, decoy-mnist, german-credit, adult.
Files are read from `root` (default `$CLEARSIGHT_DATA` or `~/.cache/clearsight`); `download=True` fetches
missing files from the official mirrors and verifies their md5 before use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clearsight.data import images, tabular  # noqa: F401  (registers the loaders)
from clearsight.data.base import ArrayDataset, as_array_dataset, default_root
from clearsight.data.registry import DATASETS
from clearsight.errors import ConfigError

SPLITS = ("train", "test")
LOADER_ARGS = ("root", "download")  # every loader takes these; its other keyword-only parameters are options


def load(name: str, split: str = "train", root: str | Path | None = None, *, download: bool = False,
         **options: Any) -> ArrayDataset:
    """Load dataset `name`, split "train" or "test".

    Args:
        root: folder holding the dataset folders (ROOT/mnist, ROOT/cifar10, ...); None -> `default_root()`.
        download: fetch missing files from the official mirrors (md5-verified). Never needed for mnist-mini.
        options: loader-specific keyword options (see `clearsight list datasets`), e.g. decoy-mnist `source`.
    """
    fn = DATASETS.get(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    DATASETS.check_options(name, options, exclude=LOADER_ARGS)
    root = Path(root).expanduser() if root is not None else default_root()
    return fn(split, root=root, download=download, **options)


def loader_options(name: str) -> dict[str, Any]:
    """Keyword options of dataset `name` beyond root/download, with their defaults."""
    return DATASETS.options(name, exclude=LOADER_ARGS)


__all__ = ["DATASETS", "SPLITS", "ArrayDataset", "as_array_dataset", "default_root", "load", "loader_options"]
