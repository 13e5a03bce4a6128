"""Per-sample attack losses on logits: `loss(logits [B, C], labels [B]) -> [B]`, larger = more adversarial.

The attack loop maximizes `loss(logits, y)` (untargeted) or `-loss(logits, target)` (targeted). The losses in
`REFERENCE_LOSSES` compare with the model's own clean prediction instead of the labels: the loop passes them
the clean class probabilities [B, C] (TRADES's inner maximization).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from clearsight.errors import ConfigError


def ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy -log softmax(z)_y per sample."""
    return F.cross_entropy(logits, labels, reduction="none")


def _true_and_best_other(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(1)
    return true, other


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CW-style margin max_{j != y} z_j - z_y (Carlini & Wagner, arXiv 1608.04644); > 0 iff misclassified.

    Unlike cross-entropy it does not saturate when the softmax does, so its gradient survives overconfident logits.
    """
    true, other = _true_and_best_other(logits, labels)
    return other - true


def dlr(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein, arXiv 2003.01690): -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3).

    pi sorts the logits in decreasing order. The ratio is invariant to shifting and rescaling the logits, so a
    model cannot mask the gradient by inflating its logits. Needs at least 3 classes (z_pi3 must exist).
    """
    if logits.shape[1] < 3:
        raise ConfigError(f"the dlr loss needs at least 3 classes (it divides by z_pi1 - z_pi3) but the model has "
                          f"{logits.shape[1]}; use loss='margin' (the same numerator, not normalized) or 'ce'")
    true, other = _true_and_best_other(logits, labels)
    top = logits.topk(3, dim=1).values
    return (other - true) / (top[:, 0] - top[:, 2] + 1e-12)


def kl(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """KL(p || softmax(z)) per sample, with p = `reference` [B, C] the clean class probabilities (Zhang et al.,
    arXiv 1901.08573: TRADES's attack maximizes it). 0 at the clean point, so the gradient there is 0 too: start
    the attack from a perturbed point (`pgd(start_sigma=...)`)."""
    return (torch.xlogy(reference, reference) - reference * logits.log_softmax(1)).sum(1)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"ce": ce, "margin": margin, "dlr": dlr,
                                                                         "kl": kl}
REFERENCE_LOSSES = frozenset({"kl"})


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name not in LOSSES:
        raise ConfigError(f"unknown attack loss {name!r}; valid losses: {', '.join(LOSSES)}")
    return LOSSES[name]
