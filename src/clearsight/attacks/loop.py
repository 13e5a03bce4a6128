"""The one steepest-ascent loop behind fgsm, pgd and apgd (METHODS.md, "Attacks").

Each iteration makes exactly one forward and one backward pass at the current iterate; a `Stepper` turns the
gradient into the next iterate (a fixed step for fgsm/pgd, the step-size schedule and momentum of apgd). The
loop keeps per sample the worst case found over x itself, all iterates and restarts: an iterate that succeeds
(is misclassified, or hits the target class) beats one that does not, and among equals the higher loss wins.
The final iterate is scored with one extra forward pass, and so is x when the run starts at a random point
(with keep="last", for adversarial training, neither: the last iterate is returned as it is).
Restarts after the first attack only the samples no run has broken yet.

While attacking, the model is in eval mode and its parameters are frozen (no weight-gradient work); on CPU, a
convolutional model's weights are also held in channels-last layout, which is 10-20% faster there
(`clearsight.modes.channels_last`, which leaves models that compute otherwise in that layout alone). All of it
is restored afterwards, also on exceptions. Inputs are never modified; the result stays on their device, and is
contiguous when they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from clearsight.attacks.ball import Ball
from clearsight.attacks.losses import REFERENCE_LOSSES, get_loss
from clearsight.checks import check_inputs, check_labels, check_logits
from clearsight.errors import ConfigError
from clearsight.modes import channels_last, eval_mode, frozen_parameters

# stepper(t, x_t, grad_t, value_t) -> x_{t+1}; value_t is the per-sample objective at x_t (maximized)
Stepper = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
TARGET_RULES = ("least-likely",)


@contextmanager
def attacking(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, frozen parameters and autograd on (also under an outer no_grad or inference_mode); restored on exit.
    """
    with eval_mode(model), frozen_parameters(model), torch.inference_mode(False), torch.enable_grad():
        yield model


def plain(t: torch.Tensor) -> torch.Tensor:
    """`t` detached, copied if it was made under inference_mode (autograd refuses to save such tensors)."""
    return t.clone() if t.is_inference() else t.detach()


def input_gradient(total: torch.Tensor, x: torch.Tensor, *, retain_graph: bool = False) -> torch.Tensor:
    """d total / d x; zeros when `total` does not depend on x at all (a constant model)."""
    if not total.requires_grad:
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(total, x, retain_graph=retain_graph, allow_unused=True, materialize_grads=True)
    return grad


@dataclass
class Goal:
    """What the attacker maximizes and when it has won, for one batch."""

    loss: str
    labels: torch.Tensor  # the true labels (untargeted) or the target classes (targeted)
    targeted: bool
    reference: torch.Tensor | None = None  # clean class probabilities [B, C], for the REFERENCE_LOSSES

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        v = get_loss(self.loss)(logits, self.labels if self.reference is None else self.reference)
        return -v if self.targeted else v

    def success(self, logits: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(1)
        return pred == self.labels if self.targeted else pred != self.labels

    def __getitem__(self, idx: torch.Tensor) -> Goal:
        return Goal(self.loss, self.labels[idx], self.targeted, None if self.reference is None else self.reference[idx])


class Worst:
    """Per-sample worst case so far: success first, then the highest objective value."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.value = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
        self.success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def offer(self, x: torch.Tensor, value: torch.Tensor, success: torch.Tensor) -> None:
        better = (success & ~self.success) | ((success == self.success) & (value > self.value))
        self.x = torch.where(better.view((-1,) + (1,) * (x.dim() - 1)), x, self.x)
        self.value = torch.where(better, value, self.value)
        self.success = self.success | success

    def merge(self, idx: torch.Tensor, other: Worst) -> None:
        """Offer the results `other` found for the samples `idx`."""
        sub = Worst(self.x[idx])
        sub.value, sub.success = self.value[idx], self.success[idx]
        sub.offer(other.x, other.value, other.success)
        self.x = self.x.index_copy(0, idx, sub.x)
        self.value = self.value.index_copy(0, idx, sub.value)
        self.success = self.success.index_copy(0, idx, sub.success)


def run_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int,
               stepper: Callable[[Ball], Stepper], restarts: int = 1, random_start: bool = True, loss: str = "ce",
               targeted: bool = False, target: torch.Tensor | str | None = None,
               generator: torch.Generator | None = None, keep: str = "worst",
               start_sigma: float | None = None, perturb_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Validate the inputs, then run `restarts` runs of `steps` steps; returns x_adv like x.

    Args:
        stepper: `stepper(ball)` builds the update rule of one run (fresh state per run).
        loss: a name in `LOSSES`; one of `REFERENCE_LOSSES` ("kl") is measured against the model's clean class
            probabilities on x, computed once before the runs.
        target: the target classes [B] of a targeted attack, or "least-likely" (the class with the lowest
            clean logit, the iterative least-likely-class attack).
        keep: "worst" returns the per-sample worst case over all iterates and restarts; "last" returns the
            last iterate without scoring it (fgsm, and adversarial training as Madry et al. and Zhang et al.
            do it; only with restarts=1).
        start_sigma: with `random_start`, start from x + start_sigma * N(0, I) (projected) instead of a uniform
            point of the ball (TRADES: 0.001).
        perturb_mask: like x; the attack changes only the features where it is nonzero (SCAAT attacks outside
            the saliency mask), the others stay exactly x.
    """
    check_inputs(x)
    check_labels(y, batch=x.shape[0])
    if int(steps) < 1 or int(restarts) < 1:
        raise ConfigError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
    if keep not in ("worst", "last") or (keep == "last" and restarts != 1):
        raise ConfigError(f"keep must be 'worst', or 'last' with restarts=1; got keep={keep!r}, restarts={restarts}")
    get_loss(loss)  # unknown names fail before any work
    if loss in REFERENCE_LOSSES and (targeted or not random_start):
        # at x itself the divergence is at its minimum: its gradient is rounding noise, and a step along its sign
        # (fgsm, or pgd's first step from x) is a random step
        raise ConfigError(f"the {loss!r} loss measures the change from the clean prediction: it has no targeted "
                          "form and needs a random start (pgd with random_start=True, e.g. start_sigma=0.001)")
    if start_sigma is not None and not (random_start and float(start_sigma) >= 0):
        raise ConfigError(f"start_sigma needs random_start=True and a value >= 0, got {start_sigma!r}")
    start = _start(random_start, start_sigma, generator)
    with attacking(model), channels_last(model, x):
        x, y = plain(x), plain(y)
        ball = Ball(x, eps, norm, perturb_mask)
        goal = Goal(loss, _labels(model, x, y, targeted, target), targeted, _reference(model, x, loss))
        worst = _run(model, ball, goal, int(steps), stepper(ball), start, keep)
        if keep == "worst" and random_start:
            # x itself is a candidate (without a random start it is the first iterate anyway): a sample that is
            # misclassified already must not come back classified correctly from a random start
            with torch.no_grad():
                logits = model(x)
            worst.offer(x, goal.value(logits), goal.success(logits))
        # without a random start every run is the same deterministic run: one is enough
        for _ in range(1, int(restarts) if random_start else 1):
            idx = (~worst.success).nonzero().squeeze(1)  # later restarts attack only samples not broken yet
            if idx.numel() == 0:
                break
            worst.merge(idx, _run(model, ball[idx], goal[idx], int(steps), stepper(ball[idx]), start, keep))
    # in x's layout (gradients of a channels-last model may come back channels-last, and callers may .view)
    return worst.x.contiguous() if x.is_contiguous() else worst.x


def _start(random_start: bool, sigma: float | None, generator: torch.Generator | None
           ) -> Callable[[Ball], torch.Tensor]:
    """The first iterate of a run: x itself, a uniform point of the ball, or x plus Gaussian noise."""
    if not random_start:
        return lambda ball: ball.center
    if sigma is not None:
        return lambda ball: ball.normal_point(float(sigma), generator)
    return lambda ball: ball.random_point(generator)


def _reference(model: nn.Module, x: torch.Tensor, loss: str) -> torch.Tensor | None:
    """The clean class probabilities a reference loss compares with (None for the other losses)."""
    if loss not in REFERENCE_LOSSES:
        return None
    with torch.no_grad():
        return model(x).softmax(1)


def _run(model: nn.Module, ball: Ball, goal: Goal, steps: int, stepper: Stepper,
         start: Callable[[Ball], torch.Tensor], keep: str) -> Worst:
    x_t = start(ball)
    found = Worst(x_t)
    for t in range(steps):
        x_t = x_t.detach().requires_grad_(True)
        logits = model(x_t)
        if t == 0:
            _check_logits(logits, goal)
        value = goal.value(logits)
        grad = input_gradient(value.sum(), x_t)
        with torch.no_grad():
            x_t, value = x_t.detach(), value.detach()
            if keep == "worst":
                found.offer(x_t, value, goal.success(logits.detach()))
            x_t = stepper(t, x_t, grad, value)
    with torch.no_grad():
        if keep == "last":
            found.x = x_t
        else:
            logits = model(x_t)
            found.offer(x_t, goal.value(logits), goal.success(logits))
    return found


def _labels(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targeted: bool,
            target: torch.Tensor | str | None) -> torch.Tensor:
    """The labels the goal refers to: y, or the target classes of a targeted attack."""
    if not targeted:
        if target is not None:
            raise ConfigError("a target was given but targeted=False; pass targeted=True for a targeted attack")
        return y
    if target is None:
        raise ConfigError(f"targeted=True needs target= (int64 class indices [B] or one of {TARGET_RULES})")
    if isinstance(target, str):
        if target not in TARGET_RULES:
            raise ConfigError(f"unknown target rule {target!r}; valid rules: {', '.join(TARGET_RULES)}")
        with torch.no_grad():
            return model(x).argmin(1)
    check_labels(target, batch=x.shape[0], name="target")
    return target.to(x.device)


def _check_logits(logits: torch.Tensor, goal: Goal) -> None:
    check_logits(logits)
    check_labels(goal.labels, num_classes=logits.shape[1], name="target" if goal.targeted else "y")
