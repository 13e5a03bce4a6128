"""Sound interval bounds on input gradients (Wicker et al., arXiv 2212.08507).

The input gradient of a ReLU network is a product of transposed weights and ReLU-derivative masks:
d s(z) / dx = W_1^T D_1 W_2^T D_2 ... W_L^T s'(z), with D_k = diag(relu'(pre-activation k)). Over an input box
each pre-activation lies in an interval [l, u] (forward IBP), so each derivative lies in [1(l > 0), 1(u > 0)];
the gradient is enclosed by multiplying interval matrices backwards from the seed s'(z).
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import nn

from clearsight.bounds.forward import box_midrad
from clearsight.bounds.interval import input_box, midrad, softmax_bounds
from clearsight.bounds.layers import backpropagate, bound_layers, propagate
from clearsight.checks import check_inputs, check_labels, check_radius
from clearsight.errors import ConfigError

Of = Literal["logit", "ce"]
OF: tuple[str, ...] = get_args(Of)


class GradientBounds(NamedTuple):
    """Bounds on the input gradient (like x) and on the logits ([B, C]) over one box."""

    lower: torch.Tensor
    upper: torch.Tensor
    logit_lower: torch.Tensor
    logit_upper: torch.Tensor


def gradient_bounds(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, eps: float | torch.Tensor = 0.01,
                    gamma: float = 0.0, of: str = "logit") -> tuple[torch.Tensor, torch.Tensor]:
    """Interval bounds on the input gradient over the l-infinity box of radius eps (arXiv 2212.08507).

    Args:
        model: a plain nn.Sequential of supported layers (see `clearsight.bounds.layers`), described in eval mode
            (Dropout is the identity, BatchNorm uses its running statistics) whatever `model.training` is.
        x: inputs [B, ...] in [0, 1].
        target: class indices [B] (int64).
        eps: l-infinity input radius (float, or a tensor broadcastable to x); the box is
            [max(0, x - eps), min(1, x + eps)].
        gamma: relative parameter radius: each Linear/Conv2d weight w ranges over [w - gamma|w|, w + gamma|w|],
            each bias likewise.
        of: "logit" bounds d z_target / dx; "ce" bounds d CE(z, target) / dx (per sample, via sound softmax
            bounds on the logit interval).

    Returns:
        (lower, upper) like x. Sound: for every x' in the box and every Linear/Conv2d parameter in the gamma box,
        lower <= g(x') <= upper, with g the gradient autograd computes (relu'(0) = 0). With eps = gamma = 0,
        lower == upper == g(x) up to float rounding. Differentiable in the model's parameters (for training).
    """
    check_inputs(x)
    check_radius(eps, "eps")
    # the clipped box is a fresh pair of tensors: turning it into (mid, rad) in place saves two input-sized
    # allocations (autograd-safe: clamp, lerp and sub save no outputs for backward)
    bounds = _bounds(model, *midrad(*input_box(x, eps), inplace=True), target, gamma=gamma, of=of)
    return bounds.lower, bounds.upper


def gradient_bounds_box(model: nn.Module, lower: torch.Tensor, upper: torch.Tensor, target: torch.Tensor, *,
                        gamma: float = 0.0, of: str = "logit") -> GradientBounds:
    """Bounds on the input gradient and on the logits over an arbitrary input box [lower, upper].

    Same contract as `gradient_bounds` (which bounds the clipped eps box); use it for boxes that
    perturb only some features. Costs one forward interval pass (two products per affine layer) and one
    backward interval pass (two products per affine layer).
    """
    return _bounds(model, *box_midrad(lower, upper), target, gamma=gamma, of=of)


def _bounds(model: nn.Module, mid: torch.Tensor, rad: torch.Tensor, target: torch.Tensor, *, gamma: float,
            of: str) -> GradientBounds:
    """The bounds over the input interval [mid ± rad] (fresh tensors: the walk may overwrite them)."""
    check_radius(gamma, "gamma")
    if of not in OF:
        raise ConfigError(f"of must be one of {', '.join(OF)}, got {of!r}")
    gamma = float(gamma)
    layers = bound_layers(model)
    z_mid, z_rad, trace = propagate(layers, mid, rad, gamma, record=True)
    check_labels(target, num_classes=z_mid.shape[1], batch=z_mid.shape[0], name="target")
    seed_mid, seed_rad = _seed(z_mid, z_rad, target, of)
    g_mid, g_rad = backpropagate(layers, trace, seed_mid, seed_rad, gamma)
    return GradientBounds(g_mid - g_rad, g_mid + g_rad, z_mid - z_rad, z_mid + z_rad)


def _seed(z_mid: torch.Tensor, z_rad: torch.Tensor, target: torch.Tensor, of: str
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The interval of d s / dz that starts the backward pass ([B, C] midpoint and radius)."""
    onehot = F.one_hot(target, z_mid.shape[1]).to(z_mid.dtype)
    if of == "logit":
        return onehot, torch.zeros_like(onehot)
    # d CE / dz_j = p_j - 1{j = y}, with p enclosed by sound softmax bounds of the logit interval
    p_lower, p_upper = softmax_bounds(z_mid - z_rad, z_mid + z_rad)
    return midrad(p_lower - onehot, p_upper - onehot)
