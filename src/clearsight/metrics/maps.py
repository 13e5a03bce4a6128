"""Attributions as metrics take them, and the per-feature tensor helpers the metrics share.

`attribution=` of a metric is a map of x (a tensor), a callable `(model, x, target) -> map` (a Captum wrapper, a
functools.partial of a clearsight attribution), or the name of a registered attribution (run with its
defaults). Metrics that only read the map of x accept all three (`explain`); metrics that recompute
explanations elsewhere (perturbed inputs, another model, an attack) need a callable or a name (`explainer`).
The target explained is y, the label, for every metric (METHODS.md: g is the gradient of the true-class logit).

A map is [B, ...] like x, or coarser and broadcastable to it ([B, 1, H, W] for grad_cam on [B, C, H, W] images).
Its entries are the features: ranking, masking and deleting act on them, and a feature of a coarser map covers
every input entry it broadcasts to (all channels of a pixel).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from clearsight.errors import ConfigError, DataError
from clearsight.metrics.shared import shared

Attribution = torch.Tensor | Callable[..., torch.Tensor] | str


def explainer(attribution: Attribution | None, *, metric: str) -> Callable[..., torch.Tensor]:
    """The callable behind `attribution`, for a metric that recomputes explanations."""
    if attribution is None:
        raise ConfigError(f"metric {metric!r} needs attribution=: a callable (model, x, target) -> map or the name of "
                          "a registered attribution (clearsight list attributions)")
    if isinstance(attribution, torch.Tensor):
        raise ConfigError(f"metric {metric!r} recomputes explanations at other inputs or of another model, so a "
                          "precomputed map is not enough; pass a callable (model, x, target) -> map or the name of "
                          "a registered attribution instead of a tensor")
    if isinstance(attribution, str):
        from clearsight.attributions import ATTRIBUTIONS  # metrics sit above attributions; imported when named

        return ATTRIBUTIONS.get(attribution)
    if not callable(attribution):
        raise ConfigError(f"attribution must be a tensor, a callable or a registered name, got {attribution!r}")
    return attribution


def with_generator(fn: Callable[..., torch.Tensor], generator: torch.Generator | None) -> Callable[..., torch.Tensor]:
    """`fn` with the generator bound in it (a seeded attribution, as the evaluation driver binds them) replaced by
    `generator`. Metrics that call the attribution at other inputs use it, so those calls draw from the row's own
    stream and leave the stream of the shared map of x (and so every other row) as it would be without them."""
    if (generator is None or not isinstance(fn, functools.partial)
            or not isinstance(fn.keywords.get("generator"), torch.Generator)):
        return fn
    return functools.partial(fn.func, *fn.args, **{**fn.keywords, "generator": generator})


def explain(attribution: Attribution | None, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
            metric: str) -> torch.Tensor:
    """The map of x (target y) [B, ...]: the tensor itself (checked), or computed once per evaluation batch."""
    if isinstance(attribution, torch.Tensor):
        return check_map(attribution, x, metric=metric)
    fn = explainer(attribution, metric=metric)
    return check_map(shared("attribution", lambda: fn(model, x, y).detach(), fn, model, x, y), x, metric=metric)


def check_map(a: torch.Tensor, x: torch.Tensor, *, metric: str, name: str = "attribution") -> torch.Tensor:
    """`a` on x's device and dtype, refused unless it is [B, ...] broadcastable to x and finite."""
    if not isinstance(a, torch.Tensor):
        raise DataError(f"{metric}: {name} must be a tensor, got {type(a).__name__}")
    if a.dim() < 2 or a.shape[0] != x.shape[0] or a.dim() != x.dim() or not _broadcasts(a.shape[1:], x.shape[1:]):
        raise DataError(f"{metric}: {name} of shape {tuple(a.shape)} does not fit inputs {tuple(x.shape)}; it must "
                        "be [B, ...] like x or broadcastable to it (e.g. [B, 1, H, W] for images)")
    a = a.detach().to(device=x.device, dtype=x.dtype)
    if a.numel() and not bool(torch.isfinite(a).all()):
        raise DataError(f"{metric}: {name} holds NaN or infinite values")
    return a


def _broadcasts(small: torch.Size, big: torch.Size) -> bool:
    return all(s in (1, b) for s, b in zip(small, big, strict=True))


def check_mask(mask: torch.Tensor, a: torch.Tensor, *, metric: str, name: str = "mask") -> torch.Tensor:
    """A boolean per-feature mask shaped like the map `a`, from a mask like x or like the map.

    A mask with more channels than the map marks a feature (a pixel of a one-channel map) when any of its
    channels is set.
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() != a.dim() or mask.shape[0] != a.shape[0]:
        raise DataError(f"{metric}: {name} must be a tensor [B, ...] like the inputs or the map "
                        f"{tuple(a.shape)}, got {getattr(mask, 'shape', type(mask).__name__)}")
    m = mask.to(a.device) != 0
    if m.shape[1] != a.shape[1] and a.shape[1] == 1:
        m = m.any(dim=1, keepdim=True)
    try:
        return m.expand_as(a)
    except RuntimeError:
        raise DataError(f"{metric}: {name} of shape {tuple(mask.shape)} does not fit the map "
                        f"{tuple(a.shape)}") from None


def flat(a: torch.Tensor) -> torch.Tensor:
    """The features of each sample as rows [B, F]."""
    return a.reshape(a.shape[0], -1)


def safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, with 0/0 undefined (NaN) and x/0 = inf for x > 0."""
    out = num / den.where(den != 0, torch.ones_like(den))
    return torch.where(den != 0, out, torch.where(num == 0, torch.full_like(out, float("nan")),
                                                  torch.full_like(out, float("inf"))))


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..F of each row [B, F] with ties given their average rank (scipy.stats.rankdata's default)."""
    b, f = values.shape
    ordered, order = values.sort(dim=1, stable=True)
    dtype = values.dtype if values.is_floating_point() else torch.float64
    mean_rank = torch.arange(1, f + 1, device=values.device, dtype=dtype).repeat(b, 1)
    # ties are rare in real-valued maps (one row in 128 gradient maps of MNIST): only rows that have one pay for
    # the tie groups
    tied = (ordered[:, 1:] == ordered[:, :-1]).any(1).nonzero().squeeze(1)
    if tied.numel():
        mean_rank[tied] = _tied_ranks(ordered[tied]).to(dtype)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def _tied_ranks(ordered: torch.Tensor) -> torch.Tensor:
    """The average ranks of the positions of sorted rows [B, F]: a tie group's positions share its mean rank."""
    b, f = ordered.shape
    pos = torch.arange(f, device=ordered.device).expand(b, f)
    starts = torch.ones_like(ordered, dtype=torch.bool)  # a tie group starts where the sorted value changes
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    # each position's group runs from the last start at or before it to the first end at or after it: running
    # max / min along the row, no scatter over groups
    first = pos.where(starts, 0).cummax(1).values
    last = pos.where(ends, f).flip(1).cummin(1).values.flip(1)
    return (first + last).to(torch.float64) / 2 + 1


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row pair [B, F] -> [B]; NaN where a row is constant (undefined)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1)
    return (a * b).sum(1) / den.where(den > 0, torch.full_like(den, float("nan")))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each row pair [B, F] -> [B] (average ranks for ties, as scipy)."""
    return pearson(average_ranks(a), average_ranks(b))
