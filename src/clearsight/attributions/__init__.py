"""Attributions: `fn(model, x, target, *, create_graph=False, ...) -> attribution`, all registered.

    import clearsight as cs
    target = cs.attributions.predicted(model, x)                  # or the labels, int64 [B]
    a = cs.attributions.smoothgrad(model, x, target, n=50, sigma=0.15, generator=torch.Generator().manual_seed(0))
    loss = a.pow(2).sum()                                         # with create_graph=True this reaches the weights

Contract shared by every entry (a contract test iterates `ATTRIBUTIONS`):
- inputs x [B, ...] in [0, 1] and int64 targets [B] are validated where they enter; x is never modified;
- the model's train/eval flags, parameter `requires_grad` flags and hooks are left exactly as found, also when
  an exception is raised inside; the mode is the caller's choice (evaluation wraps in `modes.eval_mode`);
- gradients are taken with `torch.autograd.grad` w.r.t. the input only: parameter `.grad` is never touched;
- `create_graph=True` keeps the graph so a training loss of the attribution backpropagates to the parameters;
- multi-sample methods run batched passes over samples x copies, chunked by one `max_batch` budget of rows.
"""

from __future__ import annotations

import functools
from typing import Any

from clearsight.attributions.cam import grad_cam
from clearsight.attributions.chunks import DEFAULT_MAX_BATCH, NOISE_BLOCK
from clearsight.attributions.gradients import gradient, input_x_gradient
from clearsight.attributions.guard import predicted
from clearsight.attributions.integrated import integrated_gradients, path_points
from clearsight.attributions.noise import smoothgrad, vargrad
from clearsight.attributions.registry import ATTRIBUTIONS


def get(name: str) -> Any:
    """The attribution function registered as `name`."""
    return ATTRIBUTIONS.get(name)


def attribution_options(name: str) -> dict[str, Any]:
    """Keyword options of attribution `name` with their defaults."""
    return ATTRIBUTIONS.options(name)


def build(name: str, /, **options: Any) -> functools.partial:
    """Attribution `name` with `options` bound, e.g. build("smoothgrad", n=20); unknown options are refused."""
    return ATTRIBUTIONS.bind(name, **options)


__all__ = ["ATTRIBUTIONS", "DEFAULT_MAX_BATCH", "NOISE_BLOCK", "attribution_options", "build", "get", "grad_cam",
           "gradient", "input_x_gradient", "integrated_gradients", "path_points", "predicted", "smoothgrad",
           "vargrad"]
