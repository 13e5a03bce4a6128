"""Robustness of explanations: sensitivity to random perturbations (Yeh et al., arXiv 1901.09392) and to an
adversarial attack on the explanation (Ghorbani et al., arXiv 1710.10547).

These metrics recompute the explanation elsewhere, so `attribution` must be a callable or a registered name.
The map of x itself is shared with the other rows of an evaluation batch (`clearsight.metrics.maps.explain`).
Sensitivity runs the B * n perturbed inputs through the attribution in chunks of `max_batch` inputs (a
multi-sample attribution such as smoothgrad chunks its own copies again by its own `max_batch`); the floor is the
B * n attribution calls plus the B of the map of x.
"""

from __future__ import annotations

import torch
from torch import nn

from clearsight.attacks import explanation as explanation_attacks
from clearsight.attacks.explanation import explanation_attack
from clearsight.attributions.chunks import DEFAULT_MAX_BATCH, map_rows
from clearsight.attributions.guard import positive_int
from clearsight.checks import check_inputs, check_labels, check_radius
from clearsight.errors import ConfigError
from clearsight.metrics.maps import Attribution, explain, explainer, flat, spearman, with_generator
from clearsight.metrics.perturb import SampleNoise
from clearsight.metrics.registry import METRICS
from clearsight.metrics.shared import shared

REDUCTIONS = ("max", "mean")
ATTACK_CHUNK = 16  # samples per explanation attack: bounds its memory (the attack is per sample anyway)


def sensitivity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                n: int = 10, radius: float = 0.2, reduce: str = "max", abs: bool = False,
                generator: torch.Generator | None = None, max_batch: int = DEFAULT_MAX_BATCH,
                metric: str = "max_sensitivity") -> torch.Tensor:
    """max or mean over n perturbations x' = clip(x + U[-radius, radius]^d, 0, 1) of ||a(x') - a(x)|| / ||a(x)||.

    Per sample [B]; Frobenius norms of the whole map (Quantus 0.6's defaults: fro norms, uniform noise of
    half-width 0.2). Unlike Quantus, x' is clipped to [0, 1], the input domain every clearsight attribution
    checks. NaN where a(x) = 0 (the relative change is undefined). `abs` compares |a| instead of a. The
    attribution's calls at x' draw any noise they need (smoothgrad's) from `generator` (`maps.with_generator`).
    """
    if reduce not in REDUCTIONS:
        raise ConfigError(f"unknown reduce {reduce!r}; valid reductions: {', '.join(REDUCTIONS)}")
    check_inputs(x)
    check_labels(y, batch=x.shape[0])
    positive_int("n", n)
    positive_int("max_batch", max_batch)
    r = float(check_radius(radius, "radius"))
    fn = explainer(attribution, metric=metric)
    a0 = explain(fn, model, x, y, metric=metric)
    a0 = flat(a0.abs() if abs else a0)
    noise = SampleNoise(n, tuple(x.shape[1:]), kind="uniform", generator=generator, dtype=x.dtype, device=x.device)
    at_moved = with_generator(fn, generator)

    def evaluate(sample: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
        moved = (x[sample] + r * (2 * noise.rows(sample, copy) - 1)).clamp(0.0, 1.0)
        a = flat(at_moved(model, moved, y[sample]).detach())
        return torch.linalg.vector_norm((a.abs() if abs else a) - a0[sample], dim=1)

    change = map_rows(evaluate, batch=x.shape[0], n=n, max_batch=max_batch, device=x.device)
    norm = torch.linalg.vector_norm(a0, dim=1)[:, None].expand_as(change)
    ratio = (change / norm.clamp_min(torch.finfo(change.dtype).tiny)).where(norm > 0, torch.nan)
    return ratio.amax(1) if reduce == "max" else ratio.mean(1)


@METRICS.register("max_sensitivity", higher_is_better=False, needs_grad=True, needs=("explainer",),
                  paper="arXiv 1901.09392", example={"n": 3},
                  description="largest relative change of the attribution under n uniform input perturbations")
def max_sensitivity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                    n: int = 10, radius: float = 0.2, abs: bool = False, generator: torch.Generator | None = None,
                    max_batch: int = DEFAULT_MAX_BATCH) -> torch.Tensor:
    """Max-sensitivity (Yeh et al., arXiv 1901.09392) per sample [B]: see `sensitivity` (reduce="max").

    Args:
        attribution: a callable or registered name (it is recomputed at the perturbed inputs).
        n: perturbations per sample (Quantus: 200).
        radius: half-width of the uniform noise per input entry.
        generator: seeds the noise; None draws from torch's global RNG.
        max_batch: perturbed inputs per attribution call.
    """
    return sensitivity(model, x, y, attribution=attribution, n=n, radius=radius, reduce="max", abs=abs,
                       generator=generator, max_batch=max_batch, metric="max_sensitivity")


@METRICS.register("avg_sensitivity", higher_is_better=False, needs_grad=True, needs=("explainer",),
                  paper="arXiv 1901.09392", example={"n": 3},
                  description="mean relative change of the attribution under n uniform input perturbations")
def avg_sensitivity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                    n: int = 10, radius: float = 0.2, abs: bool = False, generator: torch.Generator | None = None,
                    max_batch: int = DEFAULT_MAX_BATCH) -> torch.Tensor:
    """Average sensitivity (Yeh et al., arXiv 1901.09392) per sample [B]: see `sensitivity` (reduce="mean")."""
    return sensitivity(model, x, y, attribution=attribution, n=n, radius=radius, reduce="mean", abs=abs,
                       generator=generator, max_batch=max_batch, metric="avg_sensitivity")


def attacked_maps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attribution: Attribution | None, *,
                  eps: float, steps: int, topk: int, beta: float, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(a(x), a(x_adv)) with x_adv from the untargeted explanation attack; shared by the rows of a batch that
    attack the same attribution with the same options (topk_intersection and rank_correlation)."""
    fn = explainer(attribution, metric=metric)
    a0 = explain(fn, model, x, y, metric=metric)
    # the attack's many attribution calls draw their noise from a stream of their own, fresh per batch
    own = with_generator(fn, torch.Generator(device=x.device).manual_seed(0))

    def attack() -> torch.Tensor:
        # in chunks of samples: the attack differentiates through the attribution (create_graph), and a
        # multi-sample attribution keeps every copy's graph at once (about 37 MB per image for smoothgrad n=50)
        maps = []
        for i in range(0, x.shape[0], ATTACK_CHUNK):
            part = slice(i, i + ATTACK_CHUNK)
            x_adv = explanation_attack(model, x[part], y[part], attribution=own, eps=eps, steps=steps, topk=topk,
                                       beta=beta, base_map=a0[part])
            maps.append(own(model, x_adv, y[part]).detach())
        return torch.cat(maps)

    return a0, shared(("explanation_attack", eps, steps, topk, beta), attack, fn, model, x, y)


@METRICS.register("topk_intersection", higher_is_better=True, needs_grad=True, needs=("explainer", "attack"),
                  paper="arXiv 1710.10547", example={"steps": 2, "topk": 4},
                  description="share of the top-k features of |a(x)| kept in the top-k after an explanation attack")
def topk_intersection(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                      eps: float = 0.1, steps: int = 20, topk: int = 80, beta: float = 10.0) -> torch.Tensor:
    """Top-k intersection (Ghorbani et al., arXiv 1710.10547) per sample [B] in [0, 1]: the share of the k
    features of largest |a(x)| that are also among the k largest |a(x_adv)|, x_adv from
    `clearsight.attacks.explanation_attack` (linf `eps`, `steps`, the same k, softplus `beta`), which keeps the
    predicted class. Higher = the explanation resists the attack."""
    a0, a1 = attacked_maps(model, x, y, attribution, eps=eps, steps=steps, topk=topk, beta=beta,
                           metric="topk_intersection")
    # the attack's own measure (|a|, ties by position), so the metric and the attack never drift apart
    return explanation_attacks.topk_intersection(a0, a1, topk).to(x.dtype)


@METRICS.register("rank_correlation", higher_is_better=True, needs_grad=True, needs=("explainer", "attack"),
                  paper="arXiv 1710.10547", example={"steps": 2, "topk": 4},
                  description="Spearman correlation of |a(x)| and |a(x_adv)| after an explanation attack")
def rank_correlation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                     eps: float = 0.1, steps: int = 20, topk: int = 80, beta: float = 10.0) -> torch.Tensor:
    """Spearman rank correlation (Ghorbani et al., arXiv 1710.10547) of |a(x)| and |a(x_adv)| per sample [B],
    x_adv as in `topk_intersection` (the attack minimizes the mass on the top-k of a(x)); average ranks for
    ties, as scipy. NaN where a map is constant."""
    a0, a1 = attacked_maps(model, x, y, attribution, eps=eps, steps=steps, topk=topk, beta=beta,
                           metric="rank_correlation")
    return spearman(flat(a0).abs(), flat(a1).abs())
