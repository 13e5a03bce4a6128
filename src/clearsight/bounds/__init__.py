"""Sound interval bounds: IBP of the logits, bounds on input gradients, and certificates (arXiv 2212.08507).

    lo, hi = cs.bounds.interval_forward(model, lower, upper)               # logits over a box
    lo, hi = cs.bounds.gradient_bounds(model, x, target, eps=0.01)         # input gradient over the eps box
    cs.bounds.topk_certified(model, x, y, sensitive=[3, 4], k=5, eps=0.05)   # per-sample certificates

Models must be plain nn.Sequential stacks of Linear, Conv2d, ReLU, Flatten, AvgPool2d, Normalize, eval BatchNorm,
Dropout and Identity (build small-cnn with pool="avg"); anything else, and any layer with forward hooks, is
refused with an error naming the layer.

Soundness is that of exact interval arithmetic: rounding is not directed outward, so in floating point a true
value within a few ulps of a bound can fall just outside it (the tests allow float tolerance). Certificates
whose margins are that close to zero should not be trusted to the last bit.
"""

from clearsight.bounds.certificates import (
    certified_robust,
    check_norm,
    check_topk,
    delta_bound,
    delta_certified,
    delta_from_bounds,
    topk_certified,
    topk_rule,
)
from clearsight.bounds.forward import interval_forward, margin_bounds
from clearsight.bounds.gradient import GradientBounds, gradient_bounds, gradient_bounds_box
from clearsight.bounds.interval import input_box, mul_interval, softmax_bounds
from clearsight.bounds.layers import bound_layers

__all__ = ["GradientBounds", "bound_layers", "certified_robust", "check_norm", "check_topk", "delta_bound",
           "delta_certified", "delta_from_bounds", "gradient_bounds", "gradient_bounds_box", "input_box",
           "interval_forward", "margin_bounds", "mul_interval", "softmax_bounds", "topk_certified", "topk_rule"]
