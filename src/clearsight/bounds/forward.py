"""Interval bound propagation (IBP) of the logits and of the logit margins.

IBP: Gowal et al., arXiv 1810.12715; midpoint-radius form and relative parameter box: Wicker et al.,
arXiv 2212.08507.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from clearsight.bounds.interval import midrad
from clearsight.bounds.layers import bound_layers, propagate
from clearsight.checks import check_labels, check_radius
from clearsight.errors import DataError


def box_midrad(lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a box lower <= upper (finite, one shape, a batch axis) and return it as fresh (mid, rad).

    The check reads the radius the bounds need anyway: one min/max reduction over rad replaces elementwise
    isfinite passes over both ends, and no width-sized temporary is allocated (on CPU, input-sized allocations
    cost page faults comparable to the arithmetic).
    """
    for name, t in (("lower", lower), ("upper", upper)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() < 2:
            raise DataError(f"{name} must be a floating tensor [B, ...]")
    if lower.shape != upper.shape or lower.dtype != upper.dtype:
        raise DataError(f"lower {tuple(lower.shape)} {lower.dtype} and upper {tuple(upper.shape)} {upper.dtype} must "
                        "have the same shape and dtype")
    mid, rad = midrad(lower, upper)
    # rad = upper - lerp(lower, upper, 1/2) < 0 where lower exceeds upper by more than rounding (a box inverted by
    # one ulp reads as the point it rounds to, which bounds its empty set soundly); a NaN or infinite end makes
    # rad NaN or infinite (inf - inf = NaN), and NaN fails both comparisons
    low, high = torch.aminmax(rad)
    if not (float(low) >= 0 and float(high) < math.inf):
        for name, t in (("lower", lower), ("upper", upper)):
            if not bool(torch.isfinite(t).all()):
                raise DataError(f"{name} holds NaN or infinite values")
        raise DataError("the box must have lower <= upper everywhere")
    return mid, rad


def interval_forward(model: nn.Module, lower: torch.Tensor, upper: torch.Tensor, *, gamma: float = 0.0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval bounds on the logits of `model` over the input box [lower, upper] (IBP, arXiv 1810.12715).

    Args:
        model: a plain nn.Sequential of supported layers (see `clearsight.bounds.layers`); described in eval mode.
        lower, upper: the input box [B, ...], lower <= upper.
        gamma: relative parameter radius: every Linear/Conv2d weight w may be anywhere in [w - gamma|w|,
            w + gamma|w|] and every bias likewise (arXiv 2212.08507).

    Returns:
        (lower, upper) of the logits [B, C]. Sound: for every x' in the box and every Linear/Conv2d parameter in
        the gamma box, lower <= f(x') <= upper. With lower == upper and gamma = 0 both equal the forward pass.
    """
    check_radius(gamma, "gamma")
    layers = bound_layers(model)
    mid, rad, _ = propagate(layers, *box_midrad(lower, upper), float(gamma))
    return mid - rad, mid + rad


def margin_bounds(model: nn.Module, lower: torch.Tensor, upper: torch.Tensor, target: torch.Tensor, *,
                  gamma: float = 0.0) -> torch.Tensor:
    """Lower bounds on the logit margins z_y - z_j over the input box (and the gamma parameter box).

    The margin is bounded through the last Linear layer directly ("elision", Gowal et al. arXiv 1810.12715):
    (w_y - w_j) . h + (b_y - b_j) with h the interval of that layer's input. That is never looser than
    lower(z_y) - upper(z_j), and much tighter when the logits share the same uncertain features h. Under gamma,
    the rows w_y and w_j are perturbed independently, so the difference has radius gamma(|w_y| + |w_j|). If the
    model does not end in a Linear layer, the margin falls back to lower(z_y) - upper(z_j).

    Args:
        lower, upper: the input box [B, ...].
        target: class indices y [B] (int64).

    Returns:
        [B, C]: entry j bounds z_y - z_j from below for every x' in the box; entry y is 0. Sound; the sample is
        certified robust iff every entry j != y is > 0.
    """
    check_radius(gamma, "gamma")
    layers = bound_layers(model)
    box = box_midrad(lower, upper)
    gamma = float(gamma)
    last = layers[-1][1]
    if not isinstance(last, nn.Linear):
        mid, rad, _ = propagate(layers, *box, gamma)
        check_labels(target, num_classes=mid.shape[1], batch=mid.shape[0], name="target")
        z_lower, z_upper = mid - rad, mid + rad
        margin = z_lower.gather(1, target[:, None]) - z_upper
        return margin.scatter(1, target[:, None], 0.0)
    h_mid, h_rad, _ = propagate(layers[:-1], *box, gamma)
    weight, bias = last.weight, last.bias
    check_labels(target, num_classes=weight.shape[0], batch=h_mid.shape[0], name="target")
    diff = weight[target].unsqueeze(1) - weight.unsqueeze(0)  # [B, C, H]: w_y - w_j
    center = torch.einsum("bh,bch->bc", h_mid, diff)
    radius = torch.einsum("bh,bch->bc", h_rad, diff.abs())
    if gamma != 0:
        w_rad = gamma * (weight.abs()[target].unsqueeze(1) + weight.abs().unsqueeze(0))
        radius = radius + torch.einsum("bh,bch->bc", h_mid.abs() + h_rad, w_rad)
    if bias is not None:
        center = center + bias[target].unsqueeze(1) - bias.unsqueeze(0)
        if gamma != 0:
            radius = radius + gamma * (bias.abs()[target].unsqueeze(1) + bias.abs().unsqueeze(0))
    return (center - radius).scatter(1, target[:, None], 0.0)
