"""Robust accuracy: the per-sample worst case over a list of attacks (the AutoAttack convention)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from clearsight.attacks.registry import ATTACKS
from clearsight.checks import check_inputs, check_labels
from clearsight.errors import ConfigError, DataError
from clearsight.modes import eval_mode

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Attack | str]
                    ) -> torch.Tensor:
    """1.0 where x is classified correctly and no attack of `attacks` changes that, else 0.0; shape [B].

    Attacks run in the given order, each only on the samples every earlier attack failed on (a broken sample
    is never attacked again), so put cheap attacks first. The clean prediction and every attack's result are
    scored by the model in eval mode (restored afterwards).

    Args:
        x: inputs [B, ...] in [0, 1]; y: labels int64 [B].
        attacks: callables `attack(model, x, y) -> x_adv`, e.g. `functools.partial(pgd, eps=0.3)`, or names of
            registered attacks (run with their defaults). An attack sees a subset of the batch, so per-sample
            options (such as a target tensor) cannot be bound in advance; use target="least-likely" instead.
    """
    check_inputs(x)
    check_labels(y, batch=x.shape[0])
    fns = [prediction_attack(a) if isinstance(a, str) else a for a in attacks]
    robust = _correct(model, x, y)
    for attack in fns:
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        x_sub, y_sub = x[idx], y[idx]
        x_adv = attack(model, x_sub, y_sub)
        if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x_sub.shape:
            raise DataError(f"attack {attack!r} must return x_adv shaped like its input {tuple(x_sub.shape)}, "
                            f"got {getattr(x_adv, 'shape', type(x_adv).__name__)}")
        robust = robust.index_copy(0, idx, _correct(model, x_adv, y_sub))
    return robust.to(x.dtype)


def prediction_attack(name: str) -> Attack:
    """The registered attack `name`, refused unless it attacks the prediction (robust accuracy needs that)."""
    goal = ATTACKS.meta(name)["goal"]
    if goal != "prediction":
        raise ConfigError(f"attack {name!r} changes the {goal}, not the prediction, so it cannot lower robust "
                          "accuracy; use a prediction attack such as pgd or apgd")
    return ATTACKS.get(name)


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with eval_mode(model), torch.no_grad():
        logits = model(x)
    check_labels(y, num_classes=logits.shape[1])
    return logits.argmax(1) == y
