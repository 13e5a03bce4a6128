"""Input-gradient regularization: double backpropagation (Drucker & LeCun 1992; Ross & Doshi-Velez, arXiv
1711.09404) and its masked "right for the right reasons" form (Ross et al., arXiv 1703.03717)."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from clearsight.checks import check_radius
from clearsight.errors import ConfigError, DataError
from clearsight.objectives.base import OBJECTIVES, LossOutput, cross_entropy_only
from clearsight.options import NonNegative

GradientOf = Literal["ce", "log_probs"]
GRADIENT_OF: tuple[str, ...] = get_args(GradientOf)


@OBJECTIVES.register("input-gradient", needs_double_backprop=True, paper="arXiv 1711.09404",
                     standard_at=({"lam": 0.0},),
                     description="CE + lambda * mean squared l2 norm of the input gradient of the per-sample loss "
                                 "(double backprop); optionally only inside a per-sample mask (right for the "
                                 "right reasons)")
def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lam: NonNegative = 1.0,
                   explanation_mask: str | None = None, gradient_of: GradientOf | None = None,
                   **batch: object) -> LossOutput:
    """CE + lam * mean_i ||m_i * d L_i / d x_i||_2^2 (Drucker & LeCun 1992; Ross & Doshi-Velez, arXiv 1711.09404).

    L_i is sample i's cross-entropy (`gradient_of="ce"`, double backpropagation) or the sum of its log class
    probabilities (`"log_probs"`, the "right reasons" term of Ross et al., arXiv 1703.03717). The gradient is
    taken with create_graph=True, so the penalty is differentiated with respect to the parameters (one double
    backward per step). m_i is 1 everywhere, or with `explanation_mask` the per-sample mask the dataset
    supplies as that extra (decoy-mnist's "mask": its decoy patch), so only gradient mass inside the mask is
    penalized and the model learns to ignore what the mask covers. The per-sample gradients come from one
    backward pass of the batch sum; that is exact when samples do not interact, which train-mode batch norm
    breaks (resnet18: each d L_i / d x_i then also carries the other samples' share through the batch statistics).

    Args:
        lam: weight of the penalty (ours: 1.0; both papers tune it per dataset).
        explanation_mask: name of the batch extra holding masks like x ([B, ...], 1 where attribution is
            penalized), or None for the plain form.
        gradient_of: "ce" or "log_probs", see above; None: each form's paper, "log_probs" with
            `explanation_mask` (Ross et al.'s right-reasons term) and "ce" without (double backpropagation). On
            decoy-mnist both masked forms stop the shortcut (EXPERIMENTS.md: log_probs at lam 1, ce at lam 10).
        batch: the dataset's per-sample extras (and the engine's progress/epoch, unused).

    Returns:
        LossOutput with logs ce, grad_penalty and the clean logits. lam = 0 gives exactly `standard`'s loss.
    """
    check_radius(lam, "lam")
    if gradient_of is None:
        gradient_of = "log_probs" if explanation_mask is not None else "ce"
    if gradient_of not in GRADIENT_OF:
        raise ConfigError(f"input-gradient gradient_of must be one of {', '.join(GRADIENT_OF)}, got {gradient_of!r}")
    mask = _mask(batch, explanation_mask, x)
    if lam == 0.0:
        return cross_entropy_only(model, x, y, grad_penalty=0.0)
    x = x.detach().requires_grad_(True)  # a leaf of our own: the caller's x is never marked or modified
    logits = model(x)
    ce_each = F.cross_entropy(logits, y, reduction="none")
    explained = ce_each.sum() if gradient_of == "ce" else logits.log_softmax(1).sum()
    (grad,) = torch.autograd.grad(explained, x, create_graph=True)
    if mask is not None:
        grad = grad * mask
    penalty = grad.pow(2).flatten(1).sum(1).mean()
    ce = ce_each.mean()
    logs = {"ce": float(ce.detach()), "grad_penalty": float(penalty.detach())}
    return LossOutput(ce + lam * penalty, logs, logits.detach())


def _mask(batch: dict[str, object], name: str | None, x: torch.Tensor) -> torch.Tensor | None:
    if name is None:
        return None
    mask = batch.get(name)
    if not isinstance(mask, torch.Tensor):
        extras = sorted(k for k, v in batch.items() if isinstance(v, torch.Tensor))
        raise DataError(f"input-gradient explanation_mask={name!r}, but the batch has no extra {name!r} (extras: "
                        f"{', '.join(extras) or 'none'}); use a dataset that supplies it, e.g. decoy-mnist's 'mask'")
    if mask.shape != x.shape:
        raise DataError(f"input-gradient mask {name!r} has shape {tuple(mask.shape)}, the inputs {tuple(x.shape)}")
    return mask.to(x.dtype)
