"""Interval arithmetic in midpoint-radius form (Wicker et al., arXiv 2212.08507).

An interval tensor is a pair (mid, rad) with rad >= 0 elementwise; it stands for every tensor t with
mid - rad <= t <= mid + rad. Affine layers need about two matrix products per interval in this form
(one for the midpoint, one for the radius), which is what makes the bounds cheap enough to train with.

Every function here is *sound*: the returned interval contains every value the exact operation can take when
each argument ranges over its interval. All functions are batched, differentiable (they are used inside
training losses) and keep their inputs' device and dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Interval = tuple[torch.Tensor, torch.Tensor]


def input_box(x: torch.Tensor, eps: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The l-infinity box of radius `eps` around x, clipped to the input domain [0, 1].

    Args:
        x: inputs [B, ...] in [0, 1].
        eps: radius, a float or a tensor broadcastable to x (e.g. per sample [B, 1, ...]).

    Returns:
        (lower, upper) like x: [max(0, x - eps), min(1, x + eps)].
    """
    return (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)


def midrad(lower: torch.Tensor, upper: torch.Tensor, *, inplace: bool = False) -> Interval:
    """(lower, upper) -> (mid, rad). With lower == upper the midpoint equals them exactly and rad is 0.

    mid = lerp(lower, upper, 1/2) and rad = upper - mid: two passes and no scalar operand (a Python scalar
    costs a tensor conversion per call, which is a visible share of the small bounds of tabular MLPs).
    `inplace` reuses the storage of lower and upper (they are destroyed): for evaluation without autograd, where
    activation-sized allocations (page faults on CPU) cost as much as the arithmetic.
    """
    if inplace:
        mid = lower.lerp_(upper, 0.5)
        return mid, upper.sub_(mid)
    mid = torch.lerp(lower, upper, 0.5)
    return mid, upper - mid


def endpoints(mid: torch.Tensor, rad: torch.Tensor, *, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(mid, rad) -> (lower, upper); `inplace` reuses (destroys) the storage of mid and rad."""
    if inplace:
        upper = rad.add_(mid)
        return mid.add_(mid).sub_(upper), upper  # 2m - (m + r) = m - r
    return mid - rad, mid + rad


def bilinear(op: Callable[..., torch.Tensor], mid: torch.Tensor, rad: torch.Tensor, weight: torch.Tensor,
             gamma: float, bias: torch.Tensor | None = None, *, weight_abs: torch.Tensor | None = None
             ) -> Interval:
    """Enclose op(a, w) + b for a in [mid ± rad], w in [weight ± gamma*|weight|], b in [bias ± gamma*|bias|].

    `op(a, w)` must be a sum of products a_i * w_j (matrix product, convolution, transposed convolution), so
    that |op(a, w)| <= op(|a|, |w|) entrywise. Writing a = mid + da, w = weight + dw:
    a*w - mid*weight = weight*da + dw*mid + dw*da, so the radius is
    rad @ |W| + |mid| @ Wr + rad @ Wr with Wr = gamma*|W|, i.e. ((1 + gamma)*rad + gamma*|mid|) @ |W|: one
    product for the midpoint and one for the radius. With gamma = 0 the enclosure is exact (the tightest box).

    The relative parameter box (radius gamma*|w| per weight, gamma*|b| per bias) is the authors' choice: a
    weight of zero stays exactly zero, and gamma is a fraction of each parameter's magnitude.

    Args:
        op: `op(a, w)` or, when `bias` is given, `op(a, w, b)` (e.g. F.linear, F.conv2d with fixed strides).
        mid, rad: the input interval; rad >= 0.
        weight: the nominal weight W.
        gamma: relative parameter radius >= 0.
        bias: optional nominal bias; passed to op for the midpoint so gamma = 0 reproduces the layer exactly.
        weight_abs: |weight| if already computed (shared by the forward and backward pass of a layer).
    """
    center = op(mid, weight) if bias is None else op(mid, weight, bias)
    spread = rad if gamma == 0 else mid.abs().mul_(gamma).add_(rad, alpha=1.0 + gamma)
    radius = op(spread, weight.abs() if weight_abs is None else weight_abs)
    if bias is not None and gamma != 0:
        radius = radius + gamma * _broadcast_channel(bias.abs(), radius)
    return center, radius


def _broadcast_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-channel vector [C] shaped to add to `like` [B, C, ...] (channel axis 1) or [B, C]."""
    return v.view((1, -1) + (1,) * (like.dim() - 2))


def mul_interval(a_lower: torch.Tensor, a_upper: torch.Tensor, b_lower: torch.Tensor, b_upper: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise product of two intervals by the four-product rule: [min, max] of the corner products.

    Exact (the tightest enclosure) for a scalar product, since a*b is bilinear and attains its extremes at
    corners. Returns (lower, upper).
    """
    p1, p2, p3, p4 = a_lower * b_lower, a_lower * b_upper, a_upper * b_lower, a_upper * b_upper
    lower = torch.minimum(torch.minimum(p1, p2), torch.minimum(p3, p4))
    upper = torch.maximum(torch.maximum(p1, p2), torch.maximum(p3, p4))
    return lower, upper


def mul_mask_interval(a_lower: torch.Tensor, a_upper: torch.Tensor, d_lower: torch.Tensor, d_upper: torch.Tensor,
                      *, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`mul_interval` for a non-negative second factor d in [d_lower, d_upper] (e.g. ReLU-derivative masks).

    The four-product rule with the two products that cannot be extreme dropped: for d >= 0, a*d grows with a,
    so the minimum is at a_lower (min(a_lower*d_lower, a_lower*d_upper)) and the maximum at a_upper (max of
    a_upper*d_lower, a_upper*d_upper). Same result as `mul_interval`. `inplace` overwrites a_lower and a_upper
    and needs one temporary instead of six.
    """
    if not inplace:
        return (torch.minimum(a_lower * d_lower, a_lower * d_upper),
                torch.maximum(a_upper * d_lower, a_upper * d_upper))
    tmp = a_lower * d_upper
    torch.minimum(a_lower.mul_(d_lower), tmp, out=a_lower)
    torch.mul(a_upper, d_upper, out=tmp)
    torch.maximum(a_upper.mul_(d_lower), tmp, out=a_upper)
    return a_lower, a_upper


def softmax_bounds(lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound elementwise bounds on softmax(z) for logits z in [lower, upper] ([B, C] -> two [B, C]).

    p_j = exp(z_j) / sum_k exp(z_k) grows with z_j and shrinks with every other z_k, so
    p_j >= exp(l_j) / (exp(l_j) + sum_{k != j} exp(u_k)) and p_j <= exp(u_j) / (exp(u_j) + sum_{k != j} exp(l_k)).
    Computed with logsumexp over a [B, C, C] tensor (row j: logit j at one end, the others at the other end),
    so large logits do not overflow. With lower == upper both equal softmax(z).
    """
    eye = torch.eye(lower.shape[-1], dtype=torch.bool, device=lower.device)
    low_args = torch.where(eye, lower.unsqueeze(-2), upper.unsqueeze(-2))
    high_args = torch.where(eye, upper.unsqueeze(-2), lower.unsqueeze(-2))
    p_lower = torch.exp(lower - torch.logsumexp(low_args, dim=-1))
    p_upper = torch.exp(upper - torch.logsumexp(high_args, dim=-1))
    return p_lower, p_upper
