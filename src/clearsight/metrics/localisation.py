"""Localisation against a ground-truth mask: relevance mass and rank (Arras et al., arXiv 2003.07258), the
pointing game (Zhang et al., arXiv 1608.00507), and the mass on a decoy (Ross & Doshi-Velez, arXiv 1703.03717).

Masks are per sample, like x or like the map (a pixel of a one-channel map is inside when any channel of the
mask is). Without a mask the object is the digit: the strokes, x > `threshold` (0.5) in any channel, which is
what the MNIST-family datasets have, minus the features of `exclude` (in evaluation, decoy-mnist's per-sample
extra `mask`: its patch is bright for digits 0-5 and would otherwise count as stroke, rewarding the shortcut).
decoy-mnist's patch, where relevance is a sign of a shortcut, is its own lower-is-better metric, `decoy_mass`. A
sample whose mask is empty, or whose map has no (positive) mass or is constant (no feature stands out, so no
maximum or ranking says anything), has no value (NaN).
"""

from __future__ import annotations

import torch
from torch import nn

from clearsight.errors import ConfigError
from clearsight.metrics.maps import Attribution, check_mask, explain, flat, safe_ratio
from clearsight.metrics.registry import METRICS


def _map_and_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attribution: Attribution | None,
                  mask: torch.Tensor | None, threshold: float, metric: str,
                  exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    a = explain(attribution, model, x, y, metric=metric)
    if mask is None:
        mask = x > threshold
        if exclude is not None:
            mask = mask & ~check_mask(exclude, x, metric=metric, name="exclude")
    return flat(a), flat(check_mask(mask, a, metric=metric))


def _undefined_where_constant(values: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """NaN for samples whose map is constant (all features tie: a dead gradient would otherwise score)."""
    constant = a.amax(1) == a.amin(1)
    return values.where(~constant, torch.full_like(values, float("nan")))


def _mass(a: torch.Tensor, m: torch.Tensor, positive: bool) -> torch.Tensor:
    r = a.clamp_min(0) if positive else a
    inside = safe_ratio((r * m).sum(1), r.sum(1))
    return inside.where(m.any(1), torch.full_like(inside, float("nan")))


@METRICS.register("relevance_mass", higher_is_better=True, needs_grad=False, needs=("attribution", "mask"),
                  optional_extras={"exclude": "mask"}, paper="arXiv 2003.07258", example={},
                  description="share of the positive attribution inside the mask (default: the digit strokes)")
def relevance_mass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                   mask: torch.Tensor | None = None, threshold: float = 0.5, positive: bool = True,
                   exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Relevance mass accuracy (Arras et al., arXiv 2003.07258) per sample [B]: sum of a inside the mask / sum of a.

    Args:
        mask: per-sample ground truth like x or the map; None -> the strokes x > threshold.
        positive: only positive relevance counts (Arras et al.; 1 for a map inside the mask). False uses the signed
            map, as Quantus 0.6 does (the ratio can then leave [0, 1]).
        exclude: features never counted as the object of the default mask (decoy-mnist's patch).
    """
    a, m = _map_and_mask(model, x, y, attribution, mask, threshold, "relevance_mass", exclude)
    return _mass(a, m, positive)


@METRICS.register("relevance_rank", higher_is_better=True, needs_grad=False, needs=("attribution", "mask"),
                  optional_extras={"exclude": "mask"}, paper="arXiv 2003.07258", example={},
                  description="share of the K most relevant features inside the mask (K = mask size)")
def relevance_rank(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                   mask: torch.Tensor | None = None, threshold: float = 0.5,
                   exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Relevance rank accuracy (Arras et al., arXiv 2003.07258) per sample [B] in [0, 1]: with K the number of
    mask features, the share of the K largest attributions (signed; ties broken by position) inside the mask.
    NaN for a constant map, whose ranking is only the features' positions."""
    a, m = _map_and_mask(model, x, y, attribution, mask, threshold, "relevance_rank", exclude)
    k = m.sum(1)
    order = a.argsort(dim=1, descending=True, stable=True)
    in_top = torch.arange(a.shape[1], device=a.device)[None, :] < k[:, None]  # the first K of the order
    hits = (m.gather(1, order) & in_top).sum(1).to(a.dtype)
    rank = hits / k.clamp_min(1).to(a.dtype)
    return _undefined_where_constant(rank.where(k > 0, torch.full_like(rank, float("nan"))), a)


@METRICS.register("pointing_game", higher_is_better=True, needs_grad=False, needs=("attribution", "mask"),
                  optional_extras={"exclude": "mask"}, paper="arXiv 1608.00507", example={},
                  description="1 where the attribution's maximum lies inside the mask")
def pointing_game(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                  mask: torch.Tensor | None = None, threshold: float = 0.5,
                  exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Pointing game (Zhang et al., arXiv 1608.00507) per sample [B]: 1.0 where a feature of maximal attribution
    lies inside the mask (any of tied maxima, as Quantus 0.6), else 0.0; NaN for a constant map (every feature
    would be a maximum)."""
    a, m = _map_and_mask(model, x, y, attribution, mask, threshold, "pointing_game", exclude)
    hit = ((a == a.amax(1, keepdim=True)) & m).any(1).to(a.dtype)
    return _undefined_where_constant(hit.where(m.any(1), torch.full_like(hit, float("nan"))), a)


@METRICS.register("decoy_mass", higher_is_better=False, needs_grad=False, needs=("attribution", "mask"),
                  extras=("mask",), paper="arXiv 1703.03717", example={},
                  description="share of the positive attribution on the decoy patch (decoy-mnist's extra 'mask')")
def decoy_mass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
               mask: torch.Tensor | None = None, positive: bool = True) -> torch.Tensor:
    """`relevance_mass` on the decoy patch (Ross & Doshi-Velez, arXiv 1703.03717) per sample [B]: the share of the
    relevance a shortcut-learning model puts where the label leaks. Lower is better.

    Args:
        mask: the decoy patches [B, ...] (required; in evaluation decoy-mnist's per-sample extra `mask`).
    """
    if mask is None:
        raise ConfigError("decoy_mass needs mask= (the decoy patches); in evaluation the dataset must carry the "
                          "per-sample extra 'mask', as decoy-mnist does")
    a, m = _map_and_mask(model, x, y, attribution, mask, 0.5, "decoy_mass")
    return _mass(a, m, positive)
