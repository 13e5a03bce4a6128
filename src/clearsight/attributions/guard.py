"""What every attribution does on entry and exit, and the one input-gradient pass they all share.

`guarded` validates the caller's tensors once (the outermost call), records the model's state (train/eval flag of
every submodule, `requires_grad` of every parameter, every hook dict) and puts it back on exit, also when an
exception is raised inside. Nested calls (the `base` of smoothgrad applied to noisy copies, which may leave
[0, 1]) skip validation but still restore state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

from clearsight.checks import check_dtype, check_inputs, check_labels, check_logits
from clearsight.errors import ConfigError
from clearsight.modes import frozen_parameters

# Hook dicts of nn.Module (torch >= 2.0); a missing name is skipped so older/newer torch versions still work.
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")

_NESTED: ContextVar[bool] = ContextVar("clearsight_attribution_nested", default=False)


Snapshot = tuple[list[tuple[nn.Module, bool, dict[str, dict[int, Any]]]], list[tuple[nn.Parameter, bool]]]


def _snapshot(model: nn.Module) -> Snapshot:
    modules = [(m, m.training, {name: dict(getattr(m, name)) for name in _HOOK_DICTS if hasattr(m, name)})
               for m in model.modules()]
    return modules, [(p, p.requires_grad) for p in model.parameters()]


def _restore(snapshot: Snapshot) -> None:
    modules, params = snapshot
    for p, flag in params:
        p.requires_grad_(flag)
    for module, training, hooks in modules:
        module.training = training  # the flag only: .train() would recurse and overwrite children's own flags
        for name, saved in hooks.items():
            current = getattr(module, name)
            if current.keys() != saved.keys():
                current.clear()
                current.update(saved)


def _usable(t: torch.Tensor) -> torch.Tensor:
    # tensors made under torch.inference_mode (e.g. by an evaluation loop) cannot enter an autograd graph
    return t.clone() if t.is_inference() else t


@contextmanager
def guarded(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *,
            freeze: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Validate, enable grad, optionally freeze parameters; restore the model exactly on exit.

    Args:
        freeze: turn off `requires_grad` of the parameters for the duration (create_graph=False: the backward
            pass then computes input gradients only and the forward saves less).

    Yields:
        (x, target) usable in autograd (inference tensors are cloned; the caller's tensors are never written).
    """
    if not _NESTED.get():
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_inputs(x.detach() if isinstance(x, torch.Tensor) else x, name="x")
        check_dtype(model, x)
        check_labels(target, batch=x.shape[0], name="target")
    snapshot = _snapshot(model)
    token = _NESTED.set(True)
    try:
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            if freeze:
                stack.enter_context(frozen_parameters(model))
            yield _usable(x), _usable(target)
    finally:
        _NESTED.reset(token)
        _restore(snapshot)


def target_scores(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits[b, target[b]] as [B]; checks that the model returns logits [B, classes] and target is in range."""
    check_logits(logits, what="the model explained")
    check_labels(target, num_classes=logits.shape[1], batch=logits.shape[0], name="target")
    return logits.gather(1, target[:, None])[:, 0]


def input_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """d logits[b, target[b]] / d x[b] for every b in one forward+backward pass (no validation, no state).

    With create_graph the result stays differentiable w.r.t. the parameters and, when `x` requires grad, w.r.t.
    the caller's `x` (explanation attacks differentiate it); otherwise it is detached.
    """
    xi = x if create_graph and x.requires_grad else x.detach().requires_grad_()
    # Summing over the batch gives each sample's own gradient: rows do not interact (eval-mode models).
    score = target_scores(model(xi), target).sum()
    if not score.requires_grad:  # a model constant in its input
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(score, xi, create_graph=create_graph, allow_unused=True, materialize_grads=True)
    return grad


def positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def predicted(model: nn.Module, x: torch.Tensor, *, max_batch: int | None = None) -> torch.Tensor:
    """The predicted class argmax_c f(x)_c as an int64 target [B], for explaining the model's own decision.

    Forward passes only (no graph), in chunks of `max_batch` inputs when given; the model is evaluated in the
    mode the caller left it in.
    """
    check_inputs(x, name="x")
    check_dtype(model, x)
    with torch.no_grad():
        if max_batch is None:
            return check_logits(model(x)).argmax(1)
        chunks = x.split(positive_int("max_batch", max_batch))
        return (torch.cat([check_logits(model(c)).argmax(1) for c in chunks]) if chunks
                else x.new_zeros(0, dtype=torch.int64))
