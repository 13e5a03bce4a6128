"""Layers shared by the model definitions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from clearsight.errors import ConfigError


class Normalize(nn.Module):
    """(x - mean) / std per channel (images, [B, C, H, W]) or per feature (tabular, [B, F]).

    Lives inside the model so attacks, attributions and bounds all work in input space [0, 1].
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t, std_t = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean_t.shape != std_t.shape or mean_t.dim() != 1:
            raise ConfigError(f"normalize mean and std must be 1-D of equal length, got {list(mean)} and {list(std)}")
        if not bool((std_t > 0).all()):
            raise ConfigError(f"normalize std must be positive, got {list(std)}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)  # channel axis is dim 1 for images and tabular rows alike
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"
