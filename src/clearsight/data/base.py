"""The in-memory dataset type every loader returns, and where data lives on disk."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from clearsight.checks import check_inputs, check_labels
from clearsight.errors import DataError


def default_root() -> Path:
    """`$CLEARSIGHT_DATA` if set, else `~/.cache/clearsight`."""
    env = os.environ.get("CLEARSIGHT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clearsight"


class ArrayDataset(Dataset):
    """Tensors held in memory: inputs x [N, ...] float32 in [0, 1], labels y [N] int64, plus metadata.

    Indexing gives `(x[i], y[i])`, so it works with any torch code; `batch(idx)` gives a dict with the
    per-sample extras too (for example `mask`, the decoy patch of decoy-mnist), which is what the engine feeds
    to objectives as keyword arguments.

    Attributes:
        classes: class names, index = label.
        feature_names: one name per input feature (tabular data), else None.
        sensitive: sensitive attribute -> indices of the features that encode it (tabular data), else {}.
        extras: name -> tensor [N, ...] of per-sample side information.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, classes: Sequence[str], name: str = "",
                 split: str = "", feature_names: Sequence[str] | None = None,
                 sensitive: Mapping[str, Sequence[int]] | None = None,
                 extras: Mapping[str, torch.Tensor] | None = None) -> None:
        check_inputs(x, name=f"{name or 'dataset'} inputs")
        check_labels(y, num_classes=len(classes), batch=x.shape[0], name=f"{name or 'dataset'} labels")
        if x.dtype != torch.float32:
            raise DataError(f"dataset inputs must be float32, got {x.dtype}")
        n_features = int(x[0].numel()) if len(x) else 0
        if feature_names is not None and len(feature_names) != n_features:
            raise DataError(f"{len(feature_names)} feature names for {n_features} features")
        for group, idx in (sensitive or {}).items():
            if any(not 0 <= i < n_features for i in idx):
                raise DataError(f"sensitive feature indices of {group!r} out of range 0..{n_features - 1}")
        for key, value in (extras or {}).items():
            if value.shape[0] != x.shape[0]:
                raise DataError(f"extra {key!r} has {value.shape[0]} rows for {x.shape[0]} samples")
        self.x, self.y = x, y
        self.classes = list(classes)
        self.name, self.split = name, split
        self.feature_names = list(feature_names) if feature_names is not None else None
        self.sensitive = {k: list(v) for k, v in (sensitive or {}).items()}
        self.extras = dict(extras or {})

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def batch(self, idx: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        """`{"x": ..., "y": ..., **extras}` for the samples `idx`."""
        return {"x": self.x[idx], "y": self.y[idx], **{k: v[idx] for k, v in self.extras.items()}}

    def subset(self, idx: torch.Tensor, *, split: str | None = None) -> ArrayDataset:
        """A new dataset of the samples `idx` (metadata kept)."""
        return ArrayDataset(self.x[idx], self.y[idx], classes=self.classes, name=self.name,
                            split=self.split if split is None else split, feature_names=self.feature_names,
                            sensitive=self.sensitive, extras={k: v[idx] for k, v in self.extras.items()})

    def __repr__(self) -> str:
        return (f"ArrayDataset({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"input_shape={self.input_shape}, classes={self.num_classes})")


def as_array_dataset(ds: Dataset) -> ArrayDataset:
    """`ds` itself if it is an ArrayDataset, else its (x, y) items stacked into one (for small map-style sets)."""
    if isinstance(ds, ArrayDataset):
        return ds
    try:
        n = len(ds)  # type: ignore[arg-type]
        items = [ds[i] for i in range(n)]
        x = torch.stack([torch.as_tensor(item[0]) for item in items]).float()
        y = torch.as_tensor([int(item[1]) for item in items], dtype=torch.int64)
    except (TypeError, IndexError, ValueError, RuntimeError) as err:  # RuntimeError: items of unequal shapes
        raise DataError(f"expected a dataset of (x, y) pairs with len(); could not read it: {err}") from err
    num_classes = int(y.max()) + 1 if n else 0
    return ArrayDataset(x, y, classes=[str(c) for c in range(num_classes)], name=type(ds).__name__)
