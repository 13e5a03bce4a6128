"""Adversarial training with a consistent loss (Dong et al., arXiv 1901.09035) [paper: the idea; recon: the details].

The paper finds that neurons are less consistent (respond to less coherent sets of images) on adversarial images
than on real ones, and trains with a consistency term so that a neuron means the same thing on both. Its full
text was not available; the reconstruction (METHODS.md), with which choices are ours:
- loss = CE(f(x), y) + alpha * CE(f(x_adv), y) + lam * d(phi(x), phi(x_adv)): the adversarial loss as in the
  paper's adversarial training, plus the consistency term (ours: alpha = 1, lam = 1).
- phi is the representation at a named layer (ours: the penultimate features), read by a forward hook
  (`clearsight.neurons.capture`) during ONE forward pass of the clean and adversarial batch concatenated; d is
  the squared l2 distance of the l2-normalized features, 2 - 2 cos (ours), or `distance="cosine"`, 1 - cos (the
  same up to the factor 2, offered for readers who set lam in those units).
- x_adv from FGSM, PGD or the iterative least-likely-class attack (`attack`; ours: PGD), made in eval mode with
  frozen weights like every attack inside a step. With batch norm in train mode the concatenated forward takes
  its statistics over clean and adversarial inputs together (ours; small-cnn and mlp have no batch norm).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from clearsight.attacks.ball import Norm
from clearsight.errors import ConfigError
from clearsight.neurons import capture
from clearsight.objectives.adversarial import AttackInStep, adversarial_examples, attack_options
from clearsight.objectives.base import OBJECTIVES, LossOutput, cross_entropy_only
from clearsight.objectives.schedule import check_schedule, ramped
from clearsight.options import Count, Fraction, NonNegative, Positive

Distance = Literal["l2sq", "cosine"]
DISTANCES: tuple[str, ...] = get_args(Distance)


def feature_distance(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    """Per-sample distance [B] of two representations [B, ...]: "l2sq" ||a/|a| - b/|b|||^2 or "cosine" 1 - cos."""
    cos = F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-12)
    return 2.0 - 2.0 * cos if distance == "l2sq" else 1.0 - cos


@OBJECTIVES.register("consistency-at", needs_double_backprop=False, paper="arXiv 1901.09035", budgets=("eps",),
                     standard_at=({"alpha": 0.0, "lam": 0.0},),
                     description="CE(x) + alpha * CE(x_adv) + lam * distance of the representations of x and "
                                 "x_adv at a layer (adversarial training with a consistent loss, Dong et al.)")
def consistency_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, alpha: NonNegative = 1.0,
                   lam: NonNegative = 1.0, layer: str = "penultimate", distance: Distance = "l2sq",
                   attack: AttackInStep = "pgd", eps: NonNegative | None = None, norm: Norm = "linf",
                   steps: Count = 10, step_size: Positive | None = None, ramp: Fraction = 0.25,
                   warmup: Fraction = 0.0, **batch: object) -> LossOutput:
    """CE(f(x), y) + alpha * CE(f(x_adv), y) + lam * mean_i d(phi(x_i), phi(x_adv_i)); see the module docstring.

    Args:
        alpha: weight of the adversarial cross-entropy (ours: 1).
        lam: weight of the consistency term (ours: 1).
        layer: the layer whose output is phi (a name of `clearsight.models.get_layer`: "penultimate",
            "features", a dotted path).
        distance: "l2sq" (default) or "cosine".
        attack: "pgd" (default), "fgsm" (one step of size eps) or "least-likely" (PGD towards the class of
            lowest clean logit, the iterative least-likely-class attack).
        eps: final radius; None -> the dataset's training budget for `norm` (MNIST linf 0.3).
        steps, step_size: of pgd and least-likely (step_size None: 2.5 * eps_t / steps).
        ramp, warmup: the eps schedule, as in `pgd-at` (ours: linear from 0 over the first quarter).

    Returns:
        LossOutput with logs ce, ce_adv, distance, eps and the clean logits. With alpha = lam = 0 no attack is
        run and the loss is exactly `standard`'s; at eps_t = 0, x_adv = x and the distance is 0.
    """
    check_schedule(warmup, ramp, alpha=alpha, lam=lam)
    if distance not in DISTANCES:
        raise ConfigError(f"consistency-at distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
    final = attack_options("consistency-at", eps, norm=norm, steps=steps, step_size=step_size, attack=attack)
    if alpha == 0.0 and lam == 0.0:
        return cross_entropy_only(model, x, y, ce_adv=0.0, distance=0.0, eps=0.0)
    eps_t = ramped(final, batch.get("progress"), warmup=warmup, ramp=ramp)
    x_adv = adversarial_examples(model, x, y, eps=eps_t, norm=norm, steps=steps, step_size=step_size,
                                 attack=attack)
    with capture(model, [layer], once=True) as acts:  # a layer the model reuses is refused
        both = model(torch.cat([x, x_adv]))
    logits, logits_adv = both.chunk(2)
    phi, phi_adv = acts[layer][0].chunk(2)
    ce, ce_adv = F.cross_entropy(logits, y), F.cross_entropy(logits_adv, y)
    d = feature_distance(phi, phi_adv, distance).mean()
    logs = {"ce": float(ce.detach()), "ce_adv": float(ce_adv.detach()), "distance": float(d.detach()), "eps": eps_t}
    return LossOutput(ce + alpha * ce_adv + lam * d, logs, logits.detach())
