"""Alignment of a map with the input (Etmann et al., arXiv 1905.04172) and with reference maps (Noack et al.,
arXiv 1912.03430).

Robust models have input gradients aligned with the image itself (Etmann et al.); Interpretation
Regularization trains the gradient towards target maps, and `target_cosine` measures how far it got on held-out
data, reading the per-sample dataset extra `target_map` (the evaluation driver passes it).
"""

from __future__ import annotations

import torch
from torch import nn

from clearsight.errors import ConfigError
from clearsight.metrics.maps import Attribution, check_map, explain, flat, safe_ratio
from clearsight.metrics.registry import METRICS


def _inner(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attribution: Attribution | None,
           metric: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(|<x, a>|, ||a||, ||x||) per sample, with a coarser map broadcast over x's channels."""
    a = flat(explain(attribution, model, x, y, metric=metric).expand_as(x))
    xf = flat(x)
    return (xf * a).sum(1).abs(), torch.linalg.vector_norm(a, dim=1), torch.linalg.vector_norm(xf, dim=1)


@METRICS.register("alignment", higher_is_better=True, needs_grad=False, needs=("attribution",),
                  paper="arXiv 1905.04172", example={},
                  description="|<x, a>| / ||a||: the length of x along the attribution's direction")
def alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
              attribution: Attribution | None = None) -> torch.Tensor:
    """Alignment |<x, a>| / ||a||_2 per sample [B] (Etmann et al., arXiv 1905.04172; a = the input gradient
    there). NaN for a zero map."""
    inner, a_norm, _ = _inner(model, x, y, attribution, "alignment")
    return safe_ratio(inner, a_norm)


@METRICS.register("alignment_cosine", higher_is_better=True, needs_grad=False, needs=("attribution",),
                  paper="arXiv 1905.04172", example={},
                  description="|<x, a>| / (||x|| ||a||): the cosine form of the alignment, in [0, 1]")
def alignment_cosine(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     attribution: Attribution | None = None) -> torch.Tensor:
    """|cos(x, a)| per sample [B] in [0, 1] (Etmann et al., arXiv 1905.04172). NaN for a zero map or input."""
    inner, a_norm, x_norm = _inner(model, x, y, attribution, "alignment_cosine")
    return safe_ratio(inner, a_norm * x_norm)


@METRICS.register("target_cosine", higher_is_better=True, needs_grad=False, needs=("attribution", "reference"),
                  extras=("target_map",), paper="arXiv 1912.03430", example={},
                  description="cosine between the attribution and the sample's reference map (IR targets)")
def target_cosine(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                  target_map: torch.Tensor | None = None) -> torch.Tensor:
    """cos(a, r) per sample [B] in [-1, 1], signed, with r the reference map (Noack et al., arXiv 1912.03430:
    the IR target, SmoothGrad of a robust teacher). NaN where either map is zero.

    Args:
        target_map: [B, ...] like the attribution (or broadcastable to x); in evaluation the dataset's
            per-sample extra `target_map`.
    """
    if target_map is None:
        raise ConfigError("target_cosine needs target_map= (reference maps [B, ...]); in evaluation the dataset "
                          "must carry the per-sample extra 'target_map' (`clearsight targets`)")
    a = explain(attribution, model, x, y, metric="target_cosine").expand_as(x)
    r = check_map(target_map, x, metric="target_cosine", name="target_map").expand_as(x)
    af, rf = flat(a), flat(r)
    return safe_ratio((af * rf).sum(1), torch.linalg.vector_norm(af, dim=1) * torch.linalg.vector_norm(rf, dim=1))
