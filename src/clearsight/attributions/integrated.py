"""Integrated gradients: the input gradient averaged along the straight path from a baseline to the input."""

from __future__ import annotations

import torch
from torch import nn

from clearsight.attributions.chunks import DEFAULT_MAX_BATCH, reduce_rows
from clearsight.attributions.guard import guarded, input_gradient, positive_int
from clearsight.attributions.registry import ATTRIBUTIONS
from clearsight.errors import ConfigError, DataError

METHODS = ("riemann_midpoint", "trapezoid")


def path_points(steps: int, method: str, *, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Quadrature of the path integral over alpha in [0, 1]: (alphas [steps], weights [steps]), weights sum to 1.

    riemann_midpoint: alpha_k = (k + 1/2) / steps, weight 1/steps. trapezoid: alpha_k = k / (steps - 1), weight
    1/(steps - 1) halved at both ends (steps >= 2).
    """
    if method == "riemann_midpoint":
        positive_int("steps", steps)
        alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
        weights = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    elif method == "trapezoid":
        positive_int("steps", steps, minimum=2)
        alphas = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[0] = weights[-1] = 0.5 / (steps - 1)
    else:
        raise ConfigError(f"unknown integrated_gradients method {method!r}; valid methods: {', '.join(METHODS)}")
    return alphas.to(dtype=dtype, device=device), weights.to(dtype=dtype, device=device)


def _baseline(baseline: torch.Tensor | float | None, x: torch.Tensor) -> torch.Tensor:
    if baseline is None:
        return torch.zeros_like(x)
    b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    try:
        b = b.expand_as(x)
    except RuntimeError:
        raise DataError(f"baseline of shape {tuple(b.shape)} does not broadcast to the inputs "
                        f"{tuple(x.shape)}; pass one baseline per input, one for all, or a number") from None
    if not bool(torch.isfinite(b).all()):
        raise DataError("baseline holds NaN or infinite values")
    return b


@ATTRIBUTIONS.register("integrated_gradients", paper="arXiv 1703.01365", multi_sample=True, output="input",
                       images_only=False, description="path integral of the gradient from a baseline (zeros)")
def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *,
                         baseline: torch.Tensor | float | None = None, steps: int = 50,
                         method: str = "riemann_midpoint", max_batch: int = DEFAULT_MAX_BATCH,
                         create_graph: bool = False) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al., arXiv 1703.01365).

    (x - b) * sum_k w_k * grad f_t(b + alpha_k (x - b)), with the quadrature of `path_points`.

    Args:
        x: inputs [B, ...] in [0, 1]; never modified.
        target: int64 [B].
        baseline: None -> zeros; a number, one input [...] or one per input [B, ...].
        steps: points on the path (gradient evaluations per input).
        method: "riemann_midpoint" or "trapezoid".
        max_batch: rows (path points) per forward+backward pass; bounds peak memory whatever steps is.
        create_graph: keep the graph so a loss of the result reaches the parameters (and x when it requires
            grad); memory then grows with steps.

    Returns:
        [B, ...] like x. Completeness: attr.sum() over a sample's features = f_t(x) - f_t(b) up to the
        quadrature error, which shrinks as steps grow; exact for any steps on a linear model.
    """
    positive_int("max_batch", max_batch)
    path_points(steps, method)  # validates steps and method before any work
    with guarded(model, x, target, freeze=not create_graph) as (x, target):
        alphas, weights = path_points(steps, method, dtype=x.dtype, device=x.device)
        src = x if create_graph else x.detach()
        b = _baseline(baseline if create_graph or not isinstance(baseline, torch.Tensor) else baseline.detach(),
                      src)
        diff = src - b

        def perturb(sample: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
            return b[sample] + alphas[step].view(-1, *[1] * (x.dim() - 1)) * diff[sample]

        def attribute(rows: torch.Tensor, rows_target: torch.Tensor) -> torch.Tensor:
            return input_gradient(model, rows, rows_target, create_graph)

        return diff * reduce_rows(attribute, perturb, target, n=steps, max_batch=max_batch, weights=weights)
