"""Certificates from interval bounds: explanation change (delta), top-k sensitive features, robust accuracy.

Pure tensor functions of a batch; `clearsight.evaluate` (suite "certified") and `clearsight certify` turn them
into dataset rows through the per-sample metrics of `clearsight.metrics.certified`.

Wicker et al., arXiv 2212.08507 (explanation certificates); Gowal et al., arXiv 1810.12715 (certified accuracy).
Every certificate is sound: a sample it certifies satisfies the property for every input in the box (and every
parameter in the gamma box); it may fail to certify samples that do satisfy it (the bounds are not tight).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from clearsight.bounds.forward import margin_bounds
from clearsight.bounds.gradient import gradient_bounds
from clearsight.bounds.interval import input_box
from clearsight.checks import check_inputs, check_radius
from clearsight.errors import ConfigError
from clearsight.options import NormOrder


def delta_bound(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, eps: float, gamma: float = 0.0,
                p: NormOrder = 2.0, of: str = "logit", relative: bool = False) -> torch.Tensor:
    """Bound on how far the explanation (input gradient) can move inside the box: the delta-certificate.

    For x' in the box both g(x) and g(x') lie in [lower, upper], so |g(x') - g(x)| <= upper - lower
    elementwise and ||g(x') - g(x)||_p <= ||upper - lower||_p (arXiv 2212.08507). With `relative`, the bound is
    divided by ||g(x)||_p (the exact gradient at x), which makes it comparable across models whose gradients
    differ in scale (a model with tiny gradients would otherwise certify trivially).

    Args:
        x: inputs [B, ...] in [0, 1]; target: class indices [B].
        eps, gamma, of: as in `gradient_bounds`.
        p: the norm (2, 1, float("inf"), ...).

    Returns:
        [B] per-sample bound (inf when `relative` and g(x) = 0 but the bound is positive). Sound: for every x' in
        the box and every Linear/Conv2d parameter in the gamma box, ||g(x') - g(x)||_p <= bound (times
        ||g(x)||_p if relative).
    """
    check_norm(p)
    with parametrize.cached():  # the relative bound's two gradient bounds see one value of each parametrization
        return delta_from_bounds(model, x, target, *gradient_bounds(model, x, target, eps=eps, gamma=gamma, of=of), p=p,
                      of=of, relative=relative)


def delta_from_bounds(model: nn.Module, x: torch.Tensor, target: torch.Tensor, lower: torch.Tensor,
                      upper: torch.Tensor, *, p: float, of: str, relative: bool) -> torch.Tensor:
    """The delta bound [B] from gradient bounds already computed for x's box (to share one bound computation
    between certificates)."""
    bound = torch.linalg.vector_norm((upper - lower).flatten(1), ord=p, dim=1)
    if not relative:
        return bound
    clean, _ = gradient_bounds(model, x, target, eps=0.0, of=of)  # exact gradient (tested against autograd)
    scale = torch.linalg.vector_norm(clean.flatten(1), ord=p, dim=1)
    return torch.where(bound == 0, torch.zeros_like(bound), bound / scale)


def check_norm(p: float) -> None:
    if not (isinstance(p, int | float) and p > 0):  # also refuses NaN
        raise ConfigError(f"the norm p of the delta bound must be > 0 (e.g. 1, 2 or inf), got {p!r}")


def delta_certified(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, delta: float, eps: float,
                    gamma: float = 0.0, p: NormOrder = 2.0, of: str = "logit", relative: bool = False) -> torch.Tensor:
    """bool [B]: the explanation provably moves by at most `delta` (see `delta_bound`) inside the box."""
    return delta_bound(model, x, target, eps=eps, gamma=gamma, p=p, of=of, relative=relative) <= delta


def check_topk(n: int, sensitive: Sequence[int], k: int) -> list[int]:
    """The sorted sensitive indices, or a clear error when they or k do not fit n features."""
    idx = sorted({int(i) for i in sensitive})
    if not idx or idx[0] < 0 or idx[-1] >= n:
        raise ConfigError(f"sensitive feature indices must be a non-empty subset of 0..{n - 1}, got {list(sensitive)}")
    if not 1 <= int(k) <= n - len(idx):
        raise ConfigError(f"topk must be in 1..{n - len(idx)} (the number of non-sensitive features), got {k}")
    return idx


def topk_rule(lower: torch.Tensor, upper: torch.Tensor, sensitive: Sequence[int], k: int) -> torch.Tensor:
    """bool [B]: no sensitive feature can be among the k largest attribution magnitudes, given gradient bounds.

    Derivation. The ranking is by magnitude |g_i|. With g_i in [l_i, u_i], |g_i| lies in
    [mag_lo_i, mag_hi_i]: mag_hi = max(|l|, |u|), and mag_lo = min(|l|, |u|) if the interval excludes 0, else 0.
    Let s* be the sensitive feature of largest |g| for some g in the box. No sensitive feature is in the top-k
    iff s* is not, i.e. at least k features rank strictly above s*; none of them can be sensitive (s* is the
    largest of those), so they are k non-sensitive features with |g_j| > |g_s*|. This holds for every g in the
    box if the k-th largest mag_lo among non-sensitive features exceeds every sensitive mag_hi: then those k
    features satisfy |g_j| >= mag_lo_j > mag_hi_s >= |g_s| for every s. (Ties count against the certificate.)
    This is the authors' test (sensitive features at their upper, others at their lower bounds) made explicit
    for magnitudes.

    Args:
        lower, upper: gradient bounds [B, ...] (flattened to features).
        sensitive: indices of the sensitive features in the flattened input.
        k: size of the top set, 1 <= k <= number of non-sensitive features.
    """
    lower, upper = lower.flatten(1), upper.flatten(1)
    n = lower.shape[1]
    idx = check_topk(n, sensitive, k)
    mag_hi = torch.maximum(lower.abs(), upper.abs())
    mag_lo = torch.where((lower > 0) | (upper < 0), torch.minimum(lower.abs(), upper.abs()), torch.zeros_like(lower))
    is_sensitive = torch.zeros(n, dtype=torch.bool, device=lower.device)
    is_sensitive[idx] = True
    kth_other = mag_lo[:, ~is_sensitive].topk(int(k), dim=1).values[:, -1]
    return mag_hi[:, is_sensitive].amax(dim=1) < kth_other


def topk_certified(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, sensitive: Sequence[int], k: int,
                   eps: float, gamma: float = 0.0, of: str = "logit") -> torch.Tensor:
    """bool [B]: for every x' in the box, no sensitive feature is among the top-k of |g(x')| (see `topk_rule`)."""
    return topk_rule(*gradient_bounds(model, x, target, eps=eps, gamma=gamma, of=of), sensitive, k)


def certified_robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, gamma: float = 0.0
                     ) -> torch.Tensor:
    """bool [B]: the prediction is provably y for every x' in the box: the IBP lower bound of z_y - z_j > 0 for all
    j != y (margins bounded through the last layer, see `margin_bounds`). Its mean is the certified accuracy."""
    check_inputs(x)
    check_radius(eps, "eps")
    margins = margin_bounds(model, *input_box(x, eps), y, gamma=gamma)
    margins = margins.scatter(1, y[:, None], float("inf"))
    return (margins > 0).all(dim=1)
