"""Accuracy metrics: clean accuracy and robust accuracy under attacks."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from clearsight.errors import ConfigError
from clearsight.metrics.registry import METRICS


@METRICS.register("accuracy", higher_is_better=True, needs_grad=False,
                  description="clean accuracy: 1 where the top logit is the label")
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1.0 where argmax f(x) = y, else 0.0; shape [B]. Evaluated as given (callers set eval mode)."""
    with torch.inference_mode():
        return (model(x).argmax(1) == y).float()


@METRICS.register("robust_accuracy", higher_is_better=True, needs_grad=True,
                  description="1 where the input is classified correctly and no attack changes that")
def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
                    attack: str = "pgd", steps: int = 40, loss: str = "ce", restarts: int = 1) -> torch.Tensor:
    """Per-sample robustness [B] under `attack` at `eps` (METHODS.md: the AutoAttack worst-case convention).

    Args:
        attack: a registered prediction attack ("pgd", "apgd", "fgsm"), or several joined by "+": a sample
            counts as robust only if every one of them fails. Each may carry its own options after a colon,
            which override the shared ones: "pgd+apgd:steps=100,loss=dlr" runs pgd with `steps` and `loss`
            and apgd-100 with the dlr loss.
        steps, loss, restarts: the shared options, given to every attack that has them (fgsm: only loss).
    """
    from clearsight import attacks  # attacks import metrics-free modules only; keep the import local anyway
    from clearsight.attacks.robust import prediction_attack

    shared: dict[str, Any] = {"eps": eps, "norm": norm, "loss": loss, "steps": steps, "restarts": restarts}
    fns = []
    for name, own in parse_attacks(attack):
        attack_fn = prediction_attack(name)
        attacks.ATTACKS.check_options(name, own)
        accepted = attacks.ATTACKS.options(name)  # fgsm, one step, takes no steps or restarts
        fns.append(partial(attack_fn, **({k: v for k, v in shared.items() if k in accepted} | own)))
    return attacks.robust_accuracy(model, x, y, fns)


def parse_attacks(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """"pgd+apgd:steps=100,loss=dlr" -> [("pgd", {}), ("apgd", {"steps": 100, "loss": "dlr"})].

    Values are read as int, then float, then bool (true/false), else kept as text.
    """
    out = []
    for part in spec.split("+"):
        name, _, options = part.strip().partition(":")
        own: dict[str, Any] = {}
        for item in filter(None, (o.strip() for o in options.split(","))):
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"attack options must be key=value pairs, got {item!r} in {spec!r}")
            own[key.strip()] = _value(text.strip())
        out.append((name, own))
    return out


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)
