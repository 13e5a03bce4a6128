"""Complexity of a map: the Gini index (sparseness, Chalasani et al., arXiv 1810.06583) and the entropy
(complexity, Bhatt et al., arXiv 2005.00631).

Both read only the map of x (a tensor, or computed once per batch from a callable or name) and are computed
on |a| by default (option `abs`): how concentrated the relevance is, whatever its sign. A map that is zero
everywhere has no distribution to measure: NaN (undefined).
"""

from __future__ import annotations

import torch
from torch import nn

from clearsight.metrics.maps import Attribution, explain, flat
from clearsight.metrics.registry import METRICS


def _magnitudes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attribution: Attribution | None, metric: str,
                take_abs: bool) -> torch.Tensor:
    a = flat(explain(attribution, model, x, y, metric=metric))
    if not take_abs and bool((a < 0).any()):
        # both indices are defined for non-negative distributions only
        a = a.clamp_min(0)
    return a.abs() if take_abs else a


@METRICS.register("gini", higher_is_better=True, needs_grad=False, needs=("attribution",), paper="arXiv 1810.06583",
                  example={}, description="Gini index of |attribution| (sparseness): 0 for a constant map, "
                                          "(F-1)/F for a one-hot map")
def gini(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
         abs: bool = True) -> torch.Tensor:
    """Gini index per sample [B] (Chalasani et al., arXiv 1810.06583; Quantus Sparseness):
    sum_i (2i - F - 1) v_(i) / (F sum_i v_i) over the F features sorted ascending, v = |a|.

    0 for a constant map, (F - 1) / F (the maximum) for a one-hot map; NaN for an all-zero map. With
    abs=False negative entries count as 0. Quantus adds 1e-7 to every entry first (after scaling the batch to a
    maximum of 1), which moves the value by about 1e-7 * F / sum(v).
    """
    v = _magnitudes(model, x, y, attribution, "gini", abs).sort(dim=1).values
    f = v.shape[1]
    weights = 2 * torch.arange(1, f + 1, device=v.device, dtype=v.dtype) - f - 1
    total = v.sum(1)
    return (v * weights).sum(1) / (f * total).where(total > 0, torch.full_like(total, float("nan")))


@METRICS.register("entropy", higher_is_better=False, needs_grad=False, needs=("attribution",), paper="arXiv 2005.00631",
                  example={}, description="Shannon entropy of |attribution| / sum (lower = more concentrated)")
def entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
            abs: bool = True) -> torch.Tensor:
    """Complexity (Bhatt et al., arXiv 2005.00631): -sum_i p_i log p_i with p = |a| / sum |a| per sample [B], in
    nats (0 log 0 = 0; Quantus Complexity).

    0 for a one-hot map, log F for a constant one; NaN for an all-zero map.
    """
    v = _magnitudes(model, x, y, attribution, "entropy", abs)
    total = v.sum(1, keepdim=True)
    p = v / total.where(total > 0, torch.ones_like(total))
    h = -(p * torch.log(p.where(p > 0, torch.ones_like(p)))).sum(1)
    return h.where(total[:, 0] > 0, torch.full_like(h, float("nan")))
