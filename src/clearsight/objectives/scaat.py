"""SCAAT: saliency-constrained adaptive adversarial training (Xu et al., arXiv 2311.05143) [paper: the idea;
recon: the details].

The paper builds adversarial samples under the guidance of the saliency map, so that training removes saliency
noise and makes maps sparser and more faithful without changing the architecture. Its full text was not
available; the reconstruction (METHODS.md) and which parts are ours:
1. s = |gradient| of the current model, detached, in eval mode (ours: the plain input gradient of the
   true-class logit; option `saliency="smoothgrad"`, ours: `saliency_n` 10 noisy copies of std `saliency_sigma`
   0.15). Per sample, M = the smallest set of features holding a fraction `keep_mass` of the saliency mass
   (ours: 0.8), so concentrated maps keep few features (the paper's "adaptive").
2. x_adv = PGD (linf, eps, steps) whose perturbation is confined to the complement of M: the model is attacked
   only where it claims not to look, which teaches it to ignore those features (ours: the CE loss, uniform
   random start, the last iterate; `attack_loss="kl"` attacks TRADES's KL instead).
3. loss = CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv)), eps ramped linearly from 0 over the first
   `warmup_epochs` epochs (the paper's warm-up; ours: 1 epoch, beta 1), by the schedule every adversarial
   objective shares (`objectives/schedule.py`, its ramp end at warmup_epochs / epochs of training).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from clearsight.attacks.ball import Norm
from clearsight.attributions import gradient, smoothgrad
from clearsight.checks import check_radius
from clearsight.errors import ConfigError
from clearsight.modes import eval_mode
from clearsight.objectives.adversarial import adversarial_examples, attack_options
from clearsight.objectives.base import OBJECTIVES, LossOutput
from clearsight.objectives.schedule import ramped
from clearsight.options import Count, Fraction, NonNegative, Positive

Saliency = Literal["gradient", "smoothgrad"]
SALIENCY: tuple[str, ...] = get_args(Saliency)


def saliency_mask(saliency: torch.Tensor, keep_mass: float) -> torch.Tensor:
    """Per sample, the smallest set of features holding at least `keep_mass` of the total saliency [B, ...] -> bool.

    Features are taken in decreasing saliency until their sum reaches keep_mass * total (ties broken by the
    sort's order); an all-zero map keeps nothing (the empty set already holds all of its zero mass), and
    keep_mass 1 keeps exactly the features of nonzero saliency. The running sums are float64 and the total is
    their last entry, so the comparison never mixes two roundings of the same mass (in float32 a separately
    summed total, or small features absorbed into a large running sum, would drop or add features).
    """
    flat = saliency.detach().flatten(1).abs()
    values, order = flat.sort(dim=1, descending=True)
    mass = values.double().cumsum(1)
    before = torch.cat([mass.new_zeros(mass.shape[0], 1), mass[:, :-1]], 1)  # mass ranked above each feature
    needed = keep_mass * mass[:, -1:]
    keep_sorted = before < needed  # a feature is needed while the mass before it falls short (never at mass 0)
    if keep_mass >= 1.0:
        keep_sorted = values > 0
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, keep_sorted).view_as(saliency)


@OBJECTIVES.register("scaat", needs_double_backprop=False, paper="arXiv 2311.05143", budgets=("eps",),
                     standard_at=({"eps": 0.0}, {"beta": 0.0}),
                     description="CE + beta * KL to adversarial examples made only outside each sample's "
                                 "saliency mask (saliency-constrained adaptive adversarial training, Xu et al.)")
def scaat(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, beta: NonNegative = 1.0,
          eps: NonNegative | None = None, norm: Norm = "linf", steps: Count = 10, step_size: Positive | None = None,
          keep_mass: Fraction = 0.8, warmup_epochs: NonNegative = 1.0, saliency: Saliency = "gradient",
          saliency_n: Count = 10, saliency_sigma: NonNegative = 0.15, attack_loss: Literal["ce", "kl"] = "ce",
          **batch: object) -> LossOutput:
    """CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv)), x_adv attacked outside the saliency mask.

    See the module docstring for the algorithm and which choices are the paper's. Cost per step: one saliency
    pass (forward+backward), `steps` attack passes and the two training forwards with one backward.

    Args:
        beta: weight of the KL term (ours: 1).
        eps: final radius; None -> the dataset's training budget for `norm` (MNIST linf 0.3).
        norm: "linf" (METHODS.md) or "l2".
        steps, step_size: the attack's (None: 2.5 * eps_t / steps).
        keep_mass: share of the saliency mass the protected mask M holds, in [0, 1] (0: attack everywhere).
        warmup_epochs: eps grows linearly from 0 to eps over this many epochs (fractional epochs from the
            engine's `progress` and `epochs`; the shared `schedule.ramped` with ramp = warmup_epochs / epochs,
            so a warm-up longer than training never reaches eps), then stays; 0 starts at eps. Outside `fit`
            (no `progress` or `epochs`) the final eps is used.
        saliency: "gradient" or "smoothgrad" for the mask.
        saliency_n, saliency_sigma: smoothgrad's noisy copies and noise std (ours: 10 and 0.15). Its noise
            comes from a generator seeded by one draw of torch's global CPU RNG per step, so the rest of
            training sees the same random numbers whatever saliency_n and the input size (and a seeded run
            stays reproducible).
        attack_loss: "ce" or "kl" (the attack maximizes TRADES's KL from the clean prediction).

    Returns:
        LossOutput with logs ce, kl, eps, kept (the mean share of features in M) and the clean logits. At
        eps_t = 0 or beta = 0 no saliency pass or attack is run and the loss is exactly `standard`'s.
    """
    check_radius(beta, "beta")
    check_radius(warmup_epochs, "warmup_epochs")
    if not 0.0 <= keep_mass <= 1.0:
        raise ConfigError(f"scaat keep_mass must be in [0, 1], got {keep_mass}")
    if saliency not in SALIENCY:
        raise ConfigError(f"scaat saliency must be one of {', '.join(SALIENCY)}, got {saliency!r}")
    if attack_loss not in ("ce", "kl"):
        raise ConfigError(f"scaat attack_loss must be 'ce' or 'kl', got {attack_loss!r}")
    final = attack_options("scaat", eps, norm=norm, steps=steps, step_size=step_size)
    epochs = batch.get("epochs")
    eps_t = final if not epochs else ramped(final, batch.get("progress"), warmup=0.0,
                                            ramp=warmup_epochs / float(epochs))  # type: ignore[arg-type]
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    if eps_t == 0.0 or beta == 0.0:
        return LossOutput(ce, {"ce": float(ce.detach()), "kl": 0.0, "eps": eps_t, "kept": 0.0}, logits.detach())
    with eval_mode(model):  # the saliency of the model as it predicts, batch-norm statistics untouched
        if saliency == "gradient":
            s = gradient(model, x, y)
        else:
            seed = int(torch.randint(0, 2**62, (1,)))  # one draw of the global RNG, whatever the noise's size
            generator = torch.Generator(device=x.device).manual_seed(seed)
            s = smoothgrad(model, x, y, n=saliency_n, sigma=saliency_sigma, generator=generator)
    protected = saliency_mask(s, keep_mass)
    x_adv = adversarial_examples(model, x, y, eps=eps_t, norm=norm, steps=steps, step_size=step_size,
                                 loss=attack_loss, perturb_mask=~protected)
    kl = F.kl_div(model(x_adv).log_softmax(1), logits.log_softmax(1), log_target=True, reduction="batchmean")
    logs = {"ce": float(ce.detach()), "kl": float(kl.detach()), "eps": eps_t,
            "kept": float(protected.flatten(1).float().mean())}
    return LossOutput(ce + beta * kl, logs, logits.detach())

