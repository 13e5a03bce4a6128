"""Certified metrics: per-sample certificates from the interval bounds of `clearsight.bounds`.

Each value is a guarantee over the clipped l-infinity box of radius eps around x (and the relative parameter box
gamma), not an estimate: 1.0 means certified, and the delta bound is an upper bound on how far the explanation
can move. `clearsight.bounds.certify` computes the same quantities as dataset rows, sharing one gradient bound
between the explanation certificates. The models must be plain nn.Sequential stacks the bounds support.

Evaluated as given, like every metric: the bounds describe the eval-mode network whatever the flags, but a
parametrization that depends on the mode (spectral_norm steps its power iteration in train mode) runs as the
flags say. `clearsight.evaluate` and `certify` put the model in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from clearsight.metrics.registry import METRICS

# the bounds import clearsight.metrics.registry, so they are imported where used, never at module level here


@METRICS.register("certified_accuracy", higher_is_better=True, needs_grad=False, paper="arXiv 1810.12715",
                  description="1 where the prediction is provably the label for every input in the eps box (IBP)")
def certified_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, gamma: float = 0.0
                       ) -> torch.Tensor:
    """1.0 where the IBP lower bound of z_y - z_j is positive for every j != y over the box, else 0.0; [B]."""
    from clearsight.bounds import certified_robust

    with torch.no_grad():
        return certified_robust(model, x, y, eps=eps, gamma=gamma).float()


@METRICS.register("delta_bound", higher_is_better=False, needs_grad=False, paper="arXiv 2212.08507",
                  description="bound on how far the input gradient of the label's logit can move in the eps box, "
                              "relative to its norm at x by default")
def delta_bound(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, gamma: float = 0.0,
                p: float = 2.0, of: str = "logit", relative: bool = True) -> torch.Tensor:
    """The delta-certificate ||upper - lower||_p of the gradient bounds [B] (`clearsight.bounds.delta_bound`).

    `relative` (the default here, as in `certify`) divides by ||g(x)||_p so that models whose gradients differ in
    scale compare; it is inf where g(x) = 0 and the bound is positive.
    """
    from clearsight.bounds import delta_bound as bound

    with torch.no_grad():
        return bound(model, x, y, eps=eps, gamma=gamma, p=p, of=of, relative=relative)


@METRICS.register("certified_delta", higher_is_better=True, needs_grad=False, paper="arXiv 2212.08507",
                  description="1 where the explanation provably moves by at most delta in the eps box")
def certified_delta(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, delta: float,
                    gamma: float = 0.0, p: float = 2.0, of: str = "logit", relative: bool = True) -> torch.Tensor:
    """1.0 where the delta bound (see `delta_bound`) is at most `delta`, else 0.0; [B]."""
    from clearsight.bounds import delta_certified

    with torch.no_grad():
        return delta_certified(model, x, y, delta=delta, eps=eps, gamma=gamma, p=p, of=of, relative=relative).float()


@METRICS.register("certified_topk", higher_is_better=True, needs_grad=False, paper="arXiv 2212.08507",
                  description="1 where no sensitive feature can enter the top-k attribution magnitudes in the box")
def certified_topk(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, sensitive: Sequence[int],
                   topk: int, gamma: float = 0.0, of: str = "logit") -> torch.Tensor:
    """1.0 where, for every input in the box, no feature of `sensitive` (indices into the flattened input) is
    among the `topk` largest |gradient| entries (`clearsight.bounds.topk_rule`), else 0.0; [B]."""
    from clearsight.bounds import topk_certified

    with torch.no_grad():
        return topk_certified(model, x, y, sensitive=sensitive, k=topk, eps=eps, gamma=gamma, of=of).float()
