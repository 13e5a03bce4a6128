"""PGD adversarial training (Madry et al., arXiv 1706.06083)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clearsight.attacks.ball import Norm
from clearsight.errors import ConfigError
from clearsight.objectives.adversarial import adversarial_examples, attack_options
from clearsight.objectives.base import OBJECTIVES, LossOutput, cross_entropy_only
from clearsight.objectives.schedule import check_schedule, ramped
from clearsight.options import Count, Fraction, NonNegative, Positive


@OBJECTIVES.register("pgd-at", needs_double_backprop=False, paper="arXiv 1706.06083", budgets=("eps",),
                     standard_at=({"eps": 0.0}, {"mix": 0.0}),
                     description="cross-entropy on PGD adversarial examples (Madry et al.), optionally mixed with "
                                 "clean cross-entropy")
def pgd_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: NonNegative | None = None,
           norm: Norm = "linf", steps: Count = 40, step_size: Positive | None = None, mix: Fraction = 1.0,
           ramp: Fraction = 0.25, warmup: Fraction = 0.0, **batch: object) -> LossOutput:
    """mix * CE(f(x_adv), y) + (1 - mix) * CE(f(x), y), x_adv = PGD on CE (Madry et al., arXiv 1706.06083).

    x_adv is the last iterate of `clearsight.attacks.pgd` from a uniform random start in the eps ball ∩ [0, 1],
    attacking the model in eval mode (see `clearsight.objectives.adversarial`); the loss then runs in the mode
    the engine set.

    Args:
        eps: final radius; None -> the dataset's training budget for `norm` (MNIST linf 0.3 and l2 2.0, Madry
            et al.; CIFAR-10 linf 8/255; tabular linf 0.05), filled in by run configs, `fit` and
            `objectives.build(..., dataset=NAME)`.
        norm: "linf" or "l2".
        steps: attack steps (Madry et al., MNIST: 40).
        step_size: None -> 2.5 * eps_t / steps (0.019 at MNIST's eps 0.3 and 40 steps; Madry et al. used 0.01).
        mix: weight of the adversarial loss; 1 (the paper) trains on x_adv only, 0 is standard training.
        ramp: fraction of training at which eps reaches its final value, linearly from 0 (ours: 0.25, because
            MNIST training at eps 0.3 from the first step often stalls at chance; 0 is the paper's schedule).
        warmup: fraction of training before the ramp starts (eps 0: clean training).

    Returns:
        LossOutput with logs ce_adv and eps (ce and eps with the clean logits at mix = 0; all three at
        0 < mix < 1). At eps_t = 0 no attack is run (x_adv = x) and at mix = 0 neither; both give exactly
        `standard`'s loss.
    """
    check_schedule(warmup, ramp, mix=mix)
    if not mix <= 1.0:
        raise ConfigError(f"pgd-at mix must be in [0, 1], got {mix}")
    final = attack_options("pgd-at", eps, norm=norm, steps=steps, step_size=step_size)
    eps_t = ramped(final, batch.get("progress"), warmup=warmup, ramp=ramp)
    if mix == 0.0:  # standard training, without the attack
        return cross_entropy_only(model, x, y, eps=eps_t)
    x_adv = adversarial_examples(model, x, y, eps=eps_t, norm=norm, steps=steps, step_size=step_size)
    logits_adv = model(x_adv)
    ce_adv = F.cross_entropy(logits_adv, y)
    logs = {"ce_adv": float(ce_adv.detach()), "eps": eps_t}
    if mix == 1.0:  # at eps_t = 0, x_adv = x: its logits are the clean ones (training accuracy of the warm-up)
        return LossOutput(ce_adv, logs, logits_adv.detach() if eps_t == 0.0 else None)
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    logs["ce"] = float(ce.detach())
    return LossOutput(mix * ce_adv + (1.0 - mix) * ce, logs, logits.detach())
