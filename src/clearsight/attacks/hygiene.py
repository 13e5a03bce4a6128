"""Hygiene checks before trusting an attack-based evaluation (AutoAttack practice, Croce & Hein arXiv
2003.01690; Carlini et al. arXiv 1902.06705): signs that gradient-based attacks will overestimate robustness.

`check(model, x, y)` returns a list of warnings, each saying what was seen and what it means; empty = clean.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from clearsight.attacks.ball import Norm, per_sample_norm
from clearsight.attacks.loop import attacking, input_gradient, plain
from clearsight.attacks.losses import ce, margin
from clearsight.attacks.pgd import pgd
from clearsight.attacks.robust import robust_accuracy
from clearsight.checks import check_inputs, check_labels
from clearsight.options import Count, Fraction, NonNegative


def check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: NonNegative = 0.1, norm: Norm = "linf",
          prob_tol: NonNegative = 1e-5, random_tol: NonNegative = 1e-4, zero_grad_fraction: Fraction = 0.05,
          weak_steps: Count = 10, strong_steps: Count = 100, strong_restarts: Count = 3,
          max_gap: NonNegative | None = 0.05, generator: torch.Generator | None = None) -> list[str]:
    """Warnings about `model` on the batch (x [B, ...] in [0, 1], y int64 [B]); the model's state is restored.

    Checks, each with its threshold as an option:
      - probabilities: every output row is non-negative and sums to 1 within `prob_tol` (a softmax output).
      - randomness: two eval-mode forward passes differ by more than `random_tol` (l2 distance of the
        normalized output rows); the global RNG state is restored afterwards.
      - zero gradients: more than `zero_grad_fraction` of the samples have an all-zero input gradient of the
        cross-entropy (or of the margin max_{j!=y} z_j - z_y).
      - steps/restarts: robust accuracy under pgd with `weak_steps` steps is more than `max_gap` above the
        worst case of that attack and pgd with `strong_steps` steps and `strong_restarts` restarts, at `norm`
        `eps`. The most expensive check (weak + strong * restarts forward+backward passes); None skips it.
    """
    check_inputs(x)
    check_labels(y, batch=x.shape[0])
    if x.shape[0] == 0:  # nothing to diagnose (and every "all rows ..." test would hold vacuously)
        return []
    warnings: list[str] = []
    with attacking(model):
        x, y = plain(x), plain(y)
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            first, second = model(x), model(x)
        check_labels(y, num_classes=first.shape[1])
        warnings += _probabilities(first, prob_tol)
        warnings += _randomness(first, second, random_tol)
        warnings += _zero_gradients(model, x, y, zero_grad_fraction)
    if max_gap is not None:
        warnings += _steps_matter(model, x, y, eps, norm, weak_steps, strong_steps, strong_restarts, max_gap,
                                  generator)
    return warnings


def _probabilities(out: torch.Tensor, tol: float) -> list[str]:
    if not (bool((out >= -tol).all()) and bool(((out.sum(1) - 1).abs() <= tol).all())):
        return []
    return [f"the model outputs look like probabilities: all {out.shape[0]} rows are non-negative and sum to 1. "
            "clearsight expects logits; cross-entropy on probabilities saturates, so gradient attacks are weakened "
            "(gradient masking) and robust accuracy is overestimated. Remove the final softmax."]


def _randomness(first: torch.Tensor, second: torch.Tensor, tol: float) -> list[str]:
    def unit(o: torch.Tensor) -> torch.Tensor:
        return o / per_sample_norm(o).clamp_min(1e-10)[:, None]

    diff = float(per_sample_norm(unit(first) - unit(second)).max()) if first.numel() else 0.0
    changed = int((first.argmax(1) != second.argmax(1)).sum())
    if diff <= tol:
        return []
    return [f"the forward pass is random in eval mode: two passes on the same inputs differ by up to {diff:.3g} "
            f"(normalized outputs) and change {changed} of {first.shape[0]} predictions. Gradients of a random "
            "model are noisy and a single evaluation can be lucky, so attacks and robust accuracy are unreliable; "
            "evaluate with expectation over transformation (average gradients over many passes) or fix the "
            "randomness."]


def _zero_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fraction: float) -> list[str]:
    x = x.detach().requires_grad_(True)
    logits = model(x)
    g_ce, g_margin = (input_gradient(loss(logits, y).sum(), x, retain_graph=True) for loss in (ce, margin))
    zero_ce = int((g_ce.flatten(1) == 0).all(1).sum())
    zero_margin = int((g_margin.flatten(1) == 0).all(1).sum())
    n = x.shape[0]
    if zero_margin > fraction * n:
        return [f"{zero_margin} of {n} samples have an input gradient that is exactly zero (of the logit margin; "
                f"{zero_ce} for cross-entropy): the model is flat around them (quantized or non-differentiable "
                "preprocessing, saturated or dead activations). Gradient attacks cannot move from such points, "
                "so robust accuracy is overestimated (gradient masking); use gradient-free or adaptive attacks."]
    if zero_ce > fraction * n:
        return [f"{zero_ce} of {n} samples have a cross-entropy input gradient that is exactly zero while the "
                f"logit margin gradient is not ({zero_margin} zero): the softmax saturates (overconfident logits). "
                "CE-based attacks stall there and overestimate robustness (gradient masking); attack with "
                "loss='margin' or apgd with loss='dlr'."]
    return []


def _steps_matter(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, weak_steps: int,
                  strong_steps: int, strong_restarts: int, max_gap: float,
                  generator: torch.Generator | None) -> list[str]:
    weak = partial(pgd, eps=eps, norm=norm, steps=weak_steps, generator=generator)
    strong = partial(pgd, eps=eps, norm=norm, steps=strong_steps, restarts=strong_restarts, generator=generator)
    acc_weak = robust_accuracy(model, x, y, [weak])
    # the strong attack runs only on what the weak one left, so acc_both = worst case over the two
    keep = acc_weak.bool()
    acc_both = acc_weak.clone()
    if bool(keep.any()):
        acc_both[keep] = robust_accuracy(model, x[keep], y[keep], [strong])
    weak_mean, both_mean = float(acc_weak.mean()), float(acc_both.mean())
    if weak_mean - both_mean <= max_gap:
        return []
    return [f"more steps and restarts change robust accuracy a lot: {weak_mean:.1%} under pgd-{weak_steps} but "
            f"{both_mean:.1%} once pgd-{strong_steps} with {strong_restarts} restarts is added ({norm} eps {eps}). "
            "A converged attack would not gain this much; the loss surface is hard to optimize (gradient masking "
            "or obfuscated gradients), so do not trust robust accuracy from short attacks; use apgd, more steps "
            "and restarts, or an adaptive attack."]
