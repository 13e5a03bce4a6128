"""TRADES (Zhang et al., arXiv 1901.08573)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clearsight.attacks.ball import Norm
from clearsight.objectives.adversarial import adversarial_examples, attack_options
from clearsight.objectives.base import OBJECTIVES, LossOutput
from clearsight.objectives.schedule import check_schedule, ramped
from clearsight.options import Count, Fraction, NonNegative, Positive


@OBJECTIVES.register("trades", needs_double_backprop=False, paper="arXiv 1901.08573", budgets=("eps",),
                     standard_at=({"eps": 0.0}, {"beta": 0.0}),
                     description="CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv)), x_adv maximizing the "
                                 "KL (Zhang et al.)")
def trades(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, beta: NonNegative = 6.0,
           eps: NonNegative | None = None, norm: Norm = "linf", steps: Count = 10, step_size: Positive | None = None,
           start_sigma: NonNegative = 0.001, ramp: Fraction = 0.25, warmup: Fraction = 0.0,
           **batch: object) -> LossOutput:
    """CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv)) (Zhang et al., arXiv 1901.08573).

    The inner maximization is `clearsight.attacks.pgd` with the "kl" loss: it maximizes KL(p || softmax f(x'))
    over the eps ball ∩ [0, 1], with p the model's clean prediction in eval mode (as the authors' code computes
    it) and the start x + start_sigma * N(0, I) (the KL and its gradient are 0 at x itself); the last iterate
    is used. The outer loss runs both forwards in the mode the engine set, and its KL term is differentiated
    through both distributions, as in the authors' code (batch mean of the per-sample KL).

    Args:
        beta: weight of the KL term (Zhang et al.: 6 on MNIST and CIFAR-10).
        eps: final radius; None -> the dataset's training budget for `norm` (MNIST linf 0.3, CIFAR-10 8/255).
        norm: "linf" (the paper) or "l2".
        steps: attack steps (METHODS.md: 10; the authors used 40 on MNIST and 10 on CIFAR-10).
        step_size: None -> 2.5 * eps_t / steps (0.075 at MNIST's 0.3 and 10 steps; the authors: 0.01 with 40
            steps on MNIST, 0.007 with 10 on CIFAR-10).
        start_sigma: standard deviation of the attack's Gaussian start (the authors: 0.001).
        ramp, warmup: the eps schedule, as in `pgd-at` (ours: linear from 0 to eps over the first quarter of
            training; ramp 0 is the paper's constant eps).

    Returns:
        LossOutput with logs ce, kl, eps and the clean logits. At eps_t = 0 or beta = 0 no attack is run, the KL
        term is 0 and the loss is exactly `standard`'s.
    """
    check_schedule(warmup, ramp, beta=beta, start_sigma=start_sigma)
    final = attack_options("trades", eps, norm=norm, steps=steps, step_size=step_size)
    eps_t = ramped(final, batch.get("progress"), warmup=warmup, ramp=ramp)
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    if eps_t == 0.0 or beta == 0.0:
        return LossOutput(ce, {"ce": float(ce.detach()), "kl": 0.0, "eps": eps_t}, logits.detach())
    x_adv = adversarial_examples(model, x, y, eps=eps_t, norm=norm, steps=steps, step_size=step_size, loss="kl",
                                 start_sigma=start_sigma)
    kl = F.kl_div(model(x_adv).log_softmax(1), logits.log_softmax(1), log_target=True, reduction="batchmean")
    loss = ce + beta * kl
    return LossOutput(loss, {"ce": float(ce.detach()), "kl": float(kl.detach()), "eps": eps_t}, logits.detach())
