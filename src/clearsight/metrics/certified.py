"""Certified metrics: per-sample certificates from the interval bounds of `clearsight.bounds`.

Each value is a guarantee over the clipped l-infinity box of radius eps around x (and the relative parameter box
gamma), not an estimate: 1.0 means certified, and the delta bound is an upper bound on how far the explanation
can move. Inside an evaluation batch the rows at the same box share one gradient bound (`metrics.shared`), as
`clearsight certify` always did. The models must be plain nn.Sequential stacks the bounds support.

Evaluated as given, like every metric: the bounds describe the eval-mode network whatever the flags, but a
parametrization that depends on the mode (spectral_norm steps its power iteration in train mode) runs as the
flags say. `clearsight.evaluate` (and so `certify`) puts the model in eval mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from clearsight.bounds import certified_robust, check_norm, delta_from_bounds, gradient_bounds, topk_rule
from clearsight.checks import check_radius
from clearsight.errors import ConfigError
from clearsight.metrics.registry import METRICS
from clearsight.metrics.shared import shared
from clearsight.options import NormOrder


def _bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, gamma: float,
            of: str) -> tuple[torch.Tensor, torch.Tensor]:
    return shared(("gradient_bounds", float(eps), float(gamma), of),
                  lambda: gradient_bounds(model, x, y, eps=eps, gamma=gamma, of=of), model, x, y)


def _delta(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, gamma: float, p: float, of: str,
           relative: bool) -> torch.Tensor:
    check_radius(eps, "eps")
    check_norm(p)

    def compute() -> torch.Tensor:
        with parametrize.cached():  # the relative bound's two gradient bounds see one value of each parametrization
            return delta_from_bounds(model, x, y, *_bounds(model, x, y, eps, gamma, of), p=p, of=of,
                                     relative=relative)

    return shared(("delta_bound", float(eps), float(gamma), float(p), of, bool(relative)), compute, model, x, y)


@METRICS.register("certified_accuracy", higher_is_better=True, needs_grad=False, needs=("bounds",),
                  paper="arXiv 1810.12715", example={"eps": 0.01},
                  description="1 where the prediction is provably the label for every input in the eps box (IBP)")
def certified_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, gamma: float = 0.0
                       ) -> torch.Tensor:
    """1.0 where the IBP lower bound of z_y - z_j is positive for every j != y over the box, else 0.0; [B]."""
    with torch.no_grad():
        return certified_robust(model, x, y, eps=eps, gamma=gamma).float()


@METRICS.register("delta_bound", higher_is_better=False, needs_grad=False, needs=("bounds",),
                  paper="arXiv 2212.08507", example={"eps": 0.01},
                  description="bound on how far the input gradient of the label's logit can move in the eps box, "
                              "relative to its norm at x by default")
def delta_bound(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, gamma: float = 0.0,
                p: NormOrder = 2.0, of: str = "logit", relative: bool = True) -> torch.Tensor:
    """The delta-certificate ||upper - lower||_p of the gradient bounds [B] (`clearsight.bounds.delta_bound`).

    `relative` (the default here, as in `certify`) divides by ||g(x)||_p so that models whose gradients differ in
    scale compare; it is inf where g(x) = 0 and the bound is positive.
    """
    with torch.no_grad():
        return _delta(model, x, y, eps, gamma, p, of, relative)


@METRICS.register("certified_delta", higher_is_better=True, needs_grad=False, needs=("bounds",),
                  paper="arXiv 2212.08507", example={"eps": 0.01, "delta": 1.0},
                  description="1 where the explanation provably moves by at most delta in the eps box")
def certified_delta(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, delta: float,
                    gamma: float = 0.0, p: NormOrder = 2.0, of: str = "logit", relative: bool = True) -> torch.Tensor:
    """1.0 where the delta bound (see `delta_bound`) is at most `delta`, else 0.0; [B]."""
    with torch.no_grad():
        return (_delta(model, x, y, eps, gamma, p, of, relative) <= delta).float()


def sensitive_features(sensitive: str | Sequence[int | str], groups: Mapping[str, Sequence[int]] | None,
                       names: Sequence[str] | None = None) -> list[int]:
    """Feature indices from indices, sensitive-attribute names (keys of `groups`, e.g. "sex"), feature names, or
    a comma-separated string of names ("sex,age")."""
    items = [s.strip() for s in sensitive.split(",") if s.strip()] if isinstance(sensitive, str) else list(sensitive)
    groups, names = dict(groups or {}), list(names or [])
    out: list[int] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            out.append(item)
        elif item in groups:
            out += list(groups[item])
        elif item in names:
            out.append(names.index(item))
        else:
            valid = ", ".join(groups) or "(none: this dataset marks no sensitive attributes)"
            raise ConfigError(f"unknown sensitive attribute {item!r}; valid attributes: {valid} (or a feature name "
                              "or index)")
    if not out:
        raise ConfigError("the top-k certificate needs sensitive features (indices or attribute names)")
    return sorted(set(out))


@METRICS.register("certified_topk", higher_is_better=True, needs_grad=False, needs=("bounds",),
                  context=("feature_groups", "feature_names"), paper="arXiv 2212.08507",
                  example={"eps": 0.01, "sensitive": [0, 5], "topk": 3},
                  description="1 where no sensitive feature can enter the top-k attribution magnitudes in the box")
def certified_topk(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                   sensitive: str | Sequence[int | str], topk: int, gamma: float = 0.0, of: str = "logit",
                   feature_groups: Mapping[str, Sequence[int]] | None = None,
                   feature_names: Sequence[str] | None = None) -> torch.Tensor:
    """1.0 where, for every input in the box, no feature of `sensitive` is among the `topk` largest |gradient|
    entries (`clearsight.bounds.topk_rule`), else 0.0; [B].

    Args:
        sensitive: indices into the flattened input, or names: sensitive attributes of a tabular dataset
            ("sex", or "sex,age") or feature names, resolved with `feature_groups` / `feature_names` (the
            evaluation driver passes the dataset's `sensitive` groups and `feature_names`).
    """
    features = sensitive_features(sensitive, feature_groups, feature_names)
    check_radius(eps, "eps")
    with torch.no_grad():
        return topk_rule(*_bounds(model, x, y, eps, gamma, of), features, topk).float()
