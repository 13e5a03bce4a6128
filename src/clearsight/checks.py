"""Validation of tensors where they enter clearsight (datasets, fit, evaluate, attributions, attacks).

Caught here rather than deep inside a loop, with a message that names the argument and the fix.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from clearsight.errors import ConfigError, DataError


def check_inputs(x: torch.Tensor, *, name: str = "x", unit_range: bool = True) -> None:
    """Require a floating tensor with a batch dimension, finite, and (by default) inside [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise DataError(f"{name} must be a floating tensor (float32 in [0, 1]), got dtype {x.dtype}")
    if x.dim() < 2:
        raise DataError(f"{name} must be batch-first with at least 2 dimensions [B, ...], got shape {tuple(x.shape)}")
    if x.numel() == 0:
        return
    # the usual case in one min/max reduction: NaN fails both comparisons and inf fails the range; only a failure
    # pays for the separate passes that say precisely what is wrong
    lo_t, hi_t = torch.aminmax(x.detach())
    if unit_range and float(lo_t) >= 0.0 and float(hi_t) <= 1.0:
        return
    if not bool(torch.isfinite(x.detach()).all()):
        bad = int((~torch.isfinite(x.detach())).sum())
        raise DataError(f"{name} holds {bad} NaN or infinite values; clean the data before using it")
    if unit_range:
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"{name} must lie in [0, 1] (found values in [{lo:.4g}, {hi:.4g}]); scale the inputs to [0, 1] "
                "and put any normalization inside the model (clearsight.models.Normalize)"
            )


def check_labels(y: torch.Tensor, *, num_classes: int | None = None, batch: int | None = None,
                 name: str = "y") -> None:
    """Require int64 class indices [B] in [0, num_classes)."""
    if not isinstance(y, torch.Tensor):
        raise DataError(f"{name} must be a torch.Tensor of int64 class indices, got {type(y).__name__}")
    if y.dtype != torch.int64:
        raise DataError(f"{name} must be int64 class indices, got dtype {y.dtype}; use y.long()")
    if y.dim() != 1:
        raise DataError(f"{name} must have shape [B], got {tuple(y.shape)}")
    if batch is not None and y.shape[0] != batch:
        raise DataError(f"{name} has {y.shape[0]} labels for a batch of {batch} inputs")
    if y.numel() and num_classes is not None:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise DataError(f"{name} holds labels in [{lo}, {hi}] but there are {num_classes} classes "
                            f"(valid labels 0..{num_classes - 1})")


def check_dtype(model: nn.Module, x: torch.Tensor, *, name: str = "the inputs x") -> None:
    """Require `x` to have the floating dtype of the model's parameters. Inputs are not converted: float64 inputs
    of a float64 model (finite-difference checks) stay exact, and a mismatch (float64 data, a float32 model) fails
    here with the fix instead of inside the first layer."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is not None and isinstance(x, torch.Tensor) and x.dtype != dtype:
        raise DataError(f"{name} have dtype {x.dtype} but the model's parameters have {dtype}: convert the "
                        f"model (model.to({x.dtype})) or the inputs (x.to({dtype}))")


def check_logits(out: Any, *, what: str = "the model") -> torch.Tensor:
    """`out` if it is a logits tensor [B, C]. A model returning a tuple or a dict (features and logits, say) is
    refused with the fix: its forward must return the logits alone."""
    if not isinstance(out, torch.Tensor):
        raise DataError(f"{what} must return a logits tensor [B, C]; it returned a {type(out).__name__}. Make its "
                        "forward return the logits only (wrap it in a module that picks them out)")
    if out.dim() != 2:
        raise DataError(f"{what} must return logits [B, C]; it returned shape {tuple(out.shape)}")
    return out


def check_finite_logits(logits: torch.Tensor, *, first: int = 0) -> None:
    """Refuse to score a model whose logits are NaN or infinite: argmax would call every such sample class 0, and
    every row built on it (accuracy, attacks, maps) would be a number that means nothing. `first` is the index of
    the batch's first sample in its dataset (for the message)."""
    bad = ~torch.isfinite(logits).all(dim=1)
    if bool(bad.any()):
        where = first + int(bad.nonzero()[0])
        raise DataError(f"the model's logits are NaN or infinite on {int(bad.sum())} of {logits.shape[0]} inputs "
                        f"(the first: sample {where}); its weights are broken (NaN or overflowing) or the inputs "
                        "drive it out of range. Nothing was scored; check the weights (retrain, or resume from an "
                        "earlier checkpoint)")


def check_radius(value: float | torch.Tensor, name: str) -> float | torch.Tensor:
    """Require a finite radius >= 0 (eps, gamma, a weight); returns a number as float, a tensor as given."""
    if isinstance(value, torch.Tensor):
        ok = bool(torch.isfinite(value).all()) and not bool((value < 0).any())
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if not ok:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return value if isinstance(value, torch.Tensor) else float(value)
