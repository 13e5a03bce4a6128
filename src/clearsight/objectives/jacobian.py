"""Jacobian regularization (Hoffman et al., arXiv 1908.02729)."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from clearsight.checks import check_radius
from clearsight.errors import ConfigError
from clearsight.objectives.base import OBJECTIVES, LossOutput, cross_entropy_only
from clearsight.options import Count, NonNegative

Projections = Literal["random", "orthonormal"]
PROJECTIONS: tuple[str, ...] = get_args(Projections)


@OBJECTIVES.register("jacobian", needs_double_backprop=True, paper="arXiv 1908.02729",
                     standard_at=({"lam": 0.0},),
                     description="CE + lambda/2 * random-projection estimate of the squared Frobenius norm of the "
                                 "input-logit Jacobian (Hoffman et al.)")
def jacobian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lam: NonNegative = 0.01, n_proj: Count = 1,
             projections: Projections = "random", **batch: object) -> LossOutput:
    """CE + lam/2 * C / n_proj * sum_p ||v_p^T J(x)||^2 / B (Hoffman et al., arXiv 1908.02729).

    J(x) [B, C, D] is the Jacobian of the logits with respect to the input; each v_p^T J is one vector-Jacobian
    product (create_graph=True). With `projections="random"` every v_p is a uniform random unit vector of R^C,
    drawn per sample, so C * ||v^T J||^2 is an unbiased estimate of ||J||_F^2 (E[v v^T] = I / C), as in the
    authors' code. With `"orthonormal"` the v_p are the first n_proj vectors of one random orthonormal basis of
    R^C (shared by the batch); n_proj = C then gives ||J||_F^2 exactly (the trace over a full basis). Each
    vector-Jacobian product covers the whole batch at once, which is per-sample unless train-mode batch norm
    couples the samples.

    Args:
        lam: weight lambda_JR (the authors' code: 0.01).
        n_proj: projections per step (the authors: 1); at most C with orthonormal projections.
        projections: "random" or "orthonormal", see above.

    Returns:
        LossOutput with logs ce, jacobian (the Frobenius estimate, averaged over the batch) and the clean logits.
        lam = 0 gives exactly `standard`'s loss.
    """
    check_radius(lam, "lam")
    if projections not in PROJECTIONS:
        raise ConfigError(f"jacobian projections must be one of {', '.join(PROJECTIONS)}, got {projections!r}")
    if isinstance(n_proj, bool) or not isinstance(n_proj, int) or n_proj < 1:
        raise ConfigError(f"jacobian n_proj must be an integer >= 1, got {n_proj!r}")
    if lam == 0.0:
        return cross_entropy_only(model, x, y, jacobian=0.0)
    x = x.detach().requires_grad_(True)  # a leaf of our own: the caller's x is never marked or modified
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    frobenius = frobenius_estimate(logits, x, n_proj=n_proj, projections=projections)
    logs = {"ce": float(ce.detach()), "jacobian": float(frobenius.detach())}
    return LossOutput(ce + lam / 2 * frobenius, logs, logits.detach())


def frobenius_estimate(logits: torch.Tensor, x: torch.Tensor, *, n_proj: int = 1,
                       projections: str = "random") -> torch.Tensor:
    """C / n_proj * sum_p ||v_p^T J(x)||^2 / B, with graph (create_graph=True), for logits [B, C] computed from x."""
    batch_size, classes = logits.shape
    if projections == "orthonormal" and n_proj > classes:
        raise ConfigError(f"jacobian: {n_proj} orthonormal projections but only {classes} classes")
    total = logits.new_zeros(())
    for v in _projections(batch_size, classes, n_proj, projections, logits):
        (vjp,) = torch.autograd.grad(logits, x, grad_outputs=v, create_graph=True, retain_graph=True)
        total = total + vjp.pow(2).sum()
    return total * (classes / (n_proj * batch_size))


def _projections(batch: int, classes: int, n: int, kind: str, like: torch.Tensor) -> list[torch.Tensor]:
    """n projection matrices [B, C] (row i: sample i's vector v_p)."""
    if kind == "random":
        out = []
        for _ in range(n):
            v = torch.randn(batch, classes, device=like.device, dtype=like.dtype)
            out.append(v / torch.linalg.vector_norm(v, dim=1, keepdim=True))
        return out
    basis, _ = torch.linalg.qr(torch.randn(classes, classes, device=like.device, dtype=like.dtype))
    return [basis[:, p].expand(batch, classes) for p in range(n)]
