"""Attacks: fgsm, pgd (linf and l2), apgd, explanation attacks, robust accuracy and hygiene checks.

    import clearsight as cs
    x_adv = cs.attacks.pgd(model, x, y, eps=0.3, norm="linf", steps=40)
    robust = cs.attacks.robust_accuracy(model, x, y, [partial(cs.attacks.pgd, eps=0.3),
                                                      partial(cs.attacks.apgd, eps=0.3, loss="dlr")])
    cs.attacks.check(model, x, y)          # warnings about gradient masking, [] when none

Every attack is `attack(model, x, y, *, eps, ...) -> x_adv` registered in `ATTACKS` with metadata (`norms`,
`goal`, `paper`). fgsm, pgd and apgd share one loop (`loop.run_attack`); results always lie in the eps ball
around x intersected with [0, 1]; the model is attacked in eval mode with frozen parameters, both restored.
"""

from __future__ import annotations

from typing import Any

from clearsight.attacks.apgd import apgd
from clearsight.attacks.ball import NORMS
from clearsight.attacks.explanation import explanation_attack, softplus_copy, topk_intersection
from clearsight.attacks.hygiene import check
from clearsight.attacks.losses import LOSSES
from clearsight.attacks.pgd import fgsm, pgd
from clearsight.attacks.registry import ATTACKS
from clearsight.attacks.robust import robust_accuracy


def get(name: str) -> Any:
    """The attack registered as `name`."""
    return ATTACKS.get(name)


__all__ = ["ATTACKS", "LOSSES", "NORMS", "apgd", "check", "explanation_attack", "fgsm", "get", "pgd",
           "robust_accuracy", "softplus_copy", "topk_intersection"]
