"""Accuracy metrics: clean accuracy and robust accuracy under a list of attacks."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from clearsight import attacks
from clearsight.attacks.robust import prediction_attack
from clearsight.errors import ConfigError
from clearsight.metrics.registry import METRICS
from clearsight.metrics.shared import clean_logits
from clearsight.specs import Spec, spec_list


@METRICS.register("accuracy", higher_is_better=True, needs_grad=False, needs=(), paper=None, example={},
                  description="clean accuracy: 1 where the top logit is the label")
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1.0 where argmax f(x) = y, else 0.0; shape [B]. Evaluated as given (callers set eval mode)."""
    return (clean_logits(model, x).argmax(1) == y).float()


def attack_list(attack: Any) -> list[Spec]:
    """The attack specs of a robust-accuracy row: a name, a (name, options) pair or a list of them.

    Strings are names only: the old "pgd+apgd:loss=dlr" form is refused, attack lists are data.
    """
    if isinstance(attack, str) and any(c in attack for c in "+:,="):
        raise ConfigError(f"attack {attack!r} looks like an attack string; give a list of (name, options) pairs "
                          "instead, e.g. [('pgd', {}), ('apgd', {'loss': 'dlr', 'steps': 100})]")
    return spec_list(attack, what="attack")


@METRICS.register("robust_accuracy", higher_is_better=True, needs_grad=True, needs=("attack",),
                  worst_case_over="attack", paper="arXiv 2003.01690", example={"eps": 0.05, "steps": 3},
                  description="1 where the input is classified correctly and no attack changes that")
def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
                    attack: str | Sequence[Any] = "pgd", steps: int = 40, loss: str = "ce",
                    restarts: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample robustness [B] under attacks at `eps` (METHODS.md: the AutoAttack worst-case convention).

    Args:
        attack: a registered prediction attack ("pgd", "apgd", "fgsm"), or a list of (name, options) pairs run in
            order, each on the samples still robust: a sample counts as robust only if every one of them fails.
            An attack's own options override the shared ones: [("pgd", {}), ("apgd", {"steps": 100, "loss":
            "dlr"})] runs pgd with `steps` and `loss` and apgd-100 with the dlr loss.
        steps, loss, restarts: the shared options, given to every attack that has them (fgsm: only loss).
        generator: seeds the random starts of the attacks that have them (in evaluation: the row's own, so the
            row does not depend on the other rows); None draws from torch's global RNG.
    """
    shared: dict[str, Any] = {"eps": eps, "norm": norm, "loss": loss, "steps": steps, "restarts": restarts,
                              "generator": generator}
    fns = []
    for name, own in attack_list(attack):
        attack_fn = prediction_attack(name)
        attacks.ATTACKS.check_options(name, own)
        accepted = attacks.ATTACKS.options(name)  # fgsm, one step, takes no steps or restarts
        fns.append(partial(attack_fn, **({k: v for k, v in shared.items() if k in accepted} | own)))
    return attacks.robust_accuracy(model, x, y, fns)
