"""Explanation attacks: change the attribution while keeping the predicted class (Ghorbani et al.,
arXiv 1710.10547; Dombrowski et al., arXiv 1906.07983).

The gradient of a ReLU network is piecewise constant in x, so the gradient of an attribution-based loss is zero
almost everywhere. As Dombrowski et al. do, the attack differentiates through the model with every nn.ReLU
replaced by nn.Softplus(beta) and backpropagates through the attribution with create_graph=True. The swap is
made in place for the surrogate pass of each step and undone right after it (`softplus_relus`, also on error),
so no copy of the model is made. Each candidate step is then checked on the ORIGINAL model: a step is accepted
only if the original model's predicted class is unchanged (else that sample reverts and halves its step size, a
backtracking line search), and the best accepted iterate is scored with the original model's attribution.
Only ReLU modules are smoothed; ReLUs applied as functions inside a custom forward are not.

Passes per step: the surrogate attribution with its graph and the backward of the loss through it, then the
attribution of the candidate on the original model. The logits both need (the keep-the-class term, the
prediction check) are read from the forward pass the attribution itself makes on that input (a forward hook on
the model), so a single-pass attribution (gradient, input_x_gradient, grad_cam) costs no extra forward; a
multi-sample one (smoothgrad, integrated_gradients) never forwards the input itself and pays one more.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clearsight.attacks.ball import Ball
from clearsight.attacks.loop import attacking, plain
from clearsight.attacks.registry import ATTACKS
from clearsight.checks import check_inputs, check_labels, check_radius
from clearsight.errors import ConfigError, DataError

Attribution = Callable[..., torch.Tensor]  # attribution(model, x, target, *, create_graph=False) -> like x


def softplus_copy(model: nn.Module, beta: float = 10.0) -> nn.Module:
    """A deep copy of `model` in eval mode with every nn.ReLU replaced by nn.Softplus(beta) and frozen weights.

    Softplus(beta) -> ReLU as beta -> infinity; the copy has the same weights, so its attributions approximate
    the original's while having a non-zero second derivative. (`explanation_attack` swaps in place instead,
    see `softplus_relus`.)
    """
    smooth = copy.deepcopy(model)
    for module, name, _ in _relus(smooth):
        setattr(module, name, nn.Softplus(beta=float(beta)))
    smooth.eval()
    for p in smooth.parameters():
        p.requires_grad_(False)
    return smooth


def _relus(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    return [(module, name, child) for module in list(model.modules()) for name, child in module.named_children()
            if isinstance(child, nn.ReLU)]


@contextmanager
def softplus_relus(model: nn.Module, beta: float = 10.0) -> Iterator[nn.Module]:
    """Inside the block every nn.ReLU child of `model` is an nn.Softplus(beta); the ReLUs are put back on exit,
    also after an exception. Only the module tree changes (weights, flags and hooks of other modules do not);
    other threads using the model meanwhile see the swap."""
    swapped = _relus(model)
    try:
        for module, name, _ in swapped:
            setattr(module, name, nn.Softplus(beta=float(beta)))
        yield model
    finally:
        for module, name, child in swapped:
            setattr(module, name, child)


class _Logits:
    """Holds the output of the first forward pass of `model` on the data of `x` (a detached view counts)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None


@contextmanager
def _logits_of(model: nn.Module, x: torch.Tensor) -> Iterator[_Logits]:
    seen = _Logits()

    def keep(_module: nn.Module, inputs: Any, out: Any) -> None:
        inp = inputs[0] if inputs else None
        if (seen.value is None and isinstance(inp, torch.Tensor) and isinstance(out, torch.Tensor)
                and inp.shape == x.shape and inp.data_ptr() == x.data_ptr()):
            seen.value = out

    handle = model.register_forward_hook(keep)
    try:
        yield seen
    finally:
        handle.remove()


def topk_intersection(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """Share of the k features of largest |a| that are also among the k largest |b|, per sample [B] in [0, 1]."""
    top_a = _topk_mask(a, k)
    top_b = _topk_mask(b, k)
    return (top_a & top_b).sum(1).to(a.dtype) / k


def _topk_mask(a: torch.Tensor, k: int) -> torch.Tensor:
    flat = a.detach().flatten(1).abs()
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(k, dim=1).indices, True)


@ATTACKS.register("explanation", norms=("linf",), goal="explanation",
                  paper="arXiv:1710.10547, arXiv:1906.07983",
                  description="change the attribution (top-k or towards a target map) keeping the predicted class")
def explanation_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                       eps: float = 0.1, steps: int = 100, topk: int = 100, target_map: torch.Tensor | None = None,
                       step_size: float | None = None, beta: float = 10.0, keep_weight: float = 0.1,
                       base_map: torch.Tensor | None = None) -> torch.Tensor:
    """Find x' with ||x' - x||_inf <= eps, x' in [0, 1] and the same predicted class that changes the attribution.

    Untargeted (no `target_map`): minimize the share of the attribution mass sum |a(x')| that falls on the top-k
    features of |a(x)| (a smooth stand-in for the top-k intersection of Ghorbani et al.). Targeted: maximize
    the cosine between a(x') and `target_map` (Dombrowski et al.). The surrogate loss adds
    keep_weight * CE(f_softplus(x'), original prediction) to stay in the predicted class; steps are signed
    (linf) and accepted only where the original model still predicts the class it predicted on x.

    Args:
        x: inputs [B, ...] in [0, 1]; y: the class whose attribution is attacked, int64 [B] (usually the label).
        attribution: `attribution(model, x, target, create_graph=...)`, e.g. a functools.partial of
            `clearsight.attributions.smoothgrad`; it must be differentiable in x with create_graph=True.
            None -> `clearsight.attributions.gradient`. Features are the flattened entries of the attribution.
            While the surrogate gradient is taken the model's ReLU modules are Softplus modules, so a layer it
            hooks (grad_cam) must not be one of them.
        topk: k of the untargeted attack.
        target_map: the map to move the attribution to, shaped like the attribution (like x for gradient-type
            attributions, [B, 1, H, W] for grad_cam): the targeted attack.
        step_size: initial per-sample step; None -> 2.5 * eps / steps; halved for a sample at each rejected step.
        beta: softplus sharpness of the smoothed ReLUs.
        base_map: the attribution of x (target y) when the caller already has it (the evaluation driver shares
            one map between metrics); None computes it.

    Returns:
        x_adv like x: per sample the accepted iterate whose attribution under the ORIGINAL model is most changed,
        or x itself when no step was accepted. The original model predicts the same class on x_adv as on x.
    """
    check_inputs(x)
    check_labels(y, batch=x.shape[0])
    attribution = attribution if attribution is not None else _default_attribution()
    steps = int(steps)
    if steps < 0:
        raise ConfigError(f"steps must be >= 0, got {steps}")
    eta0 = 2.5 * float(check_radius(eps, "eps")) / max(steps, 1) if step_size is None else float(step_size)
    with attacking(model):
        x, y = plain(x), plain(y)
        ball = Ball(x, eps, "linf")
        with _logits_of(model, x) as seen:
            a0 = (attribution(model, x, y) if base_map is None else plain(base_map)).detach()
        logits = seen.value if seen.value is not None else _forward(model, x)
        check_labels(y, num_classes=logits.shape[1])
        pred = logits.detach().argmax(1)
        score = _scorer(a0, topk, target_map)
        best_x, best = x, score(a0)
        cur = x
        eta = torch.full((x.shape[0],) + (1,) * (x.dim() - 1), eta0, device=x.device, dtype=x.dtype)
        view = eta.shape
        for _ in range(steps):
            cur = cur.detach().requires_grad_(True)
            with softplus_relus(model, beta), _logits_of(model, cur) as seen:
                a = attribution(model, cur, y, create_graph=True)
                smooth_logits = seen.value if seen.value is not None else model(cur)
            if not a.requires_grad:
                raise ConfigError("the attribution returned a tensor without a graph to its input; it must be "
                                  "differentiable in x when called with create_graph=True")
            objective = score(a) + keep_weight * F.cross_entropy(smooth_logits, pred, reduction="none")
            (grad,) = torch.autograd.grad(objective.sum(), cur)
            cand = ball.project(cur.detach() - eta * grad.sign())
            with _logits_of(model, cand) as seen:
                a_cand = attribution(model, cand, y).detach()
            cand_logits = seen.value if seen.value is not None else _forward(model, cand)
            with torch.no_grad():
                ok = cand_logits.argmax(1) == pred
                s = score(a_cand)
                improved = ok & (s < best)
                best_x = torch.where(improved.view(view), cand, best_x)
                best = torch.where(improved, s, best)
                cur = torch.where(ok.view(view), cand, cur.detach())
                eta = torch.where(ok.view(view), eta, eta / 2)
    return best_x.detach()


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _scorer(a0: torch.Tensor, topk: int, target_map: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """score(a) -> [B], lower = attribution further from a0 (untargeted) or closer to the target map."""
    if target_map is not None:
        if not isinstance(target_map, torch.Tensor) or target_map.shape != a0.shape:
            raise DataError(f"target_map must be a tensor shaped like the attribution {tuple(a0.shape)}, "
                            f"got {getattr(target_map, 'shape', type(target_map).__name__)}")
        target = plain(target_map).to(device=a0.device, dtype=a0.dtype).flatten(1)
        return lambda a: -F.cosine_similarity(a.flatten(1), target, dim=1, eps=1e-12)
    n = a0[0].numel()
    if not 1 <= int(topk) <= n:
        raise ConfigError(f"topk must be between 1 and the {n} attribution features, got {topk}")
    mask = _topk_mask(a0, int(topk)).to(a0.dtype)
    return lambda a: (a.flatten(1).abs() * mask).sum(1) / a.flatten(1).abs().sum(1).clamp_min(1e-12)


def _default_attribution() -> Attribution:
    try:
        from clearsight.attributions import gradient
    except ImportError as err:  # the attributions package is missing from this installation
        raise ConfigError("explanation_attack needs an attribution; pass attribution=... (clearsight.attributions "
                          f"could not be imported: {err})") from err
    return gradient
