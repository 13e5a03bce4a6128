"""Single-pass attributions: the input gradient (saliency) and input x gradient."""

from __future__ import annotations

import torch
from torch import nn

from clearsight.attributions.guard import guarded, input_gradient
from clearsight.attributions.registry import ATTRIBUTIONS


@ATTRIBUTIONS.register("gradient", paper="arXiv 1312.6034", multi_sample=False, output="input", images_only=False,
                       description="signed input gradient of the target logit (saliency)")
def gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
    """Input gradient of the target logit, d f(x)_t / d x (Simonyan et al., arXiv 1312.6034), signed.

    Args:
        model: returns logits [B, classes]; used in the mode the caller left it in (wrap in
            `clearsight.modes.eval_mode` for per-sample results: train-mode BatchNorm couples the batch).
        x: inputs [B, ...] in [0, 1]; never modified.
        target: int64 [B], the class explained for each input (see `predicted`).
        create_graph: keep the graph so a loss of the attribution can be backpropagated to the parameters
            (and to `x` when it requires grad).

    Returns:
        [B, ...] like x. Take `.abs()` for unsigned saliency.

    The model's train/eval flags, `requires_grad` flags and hooks are left exactly as found, also on error;
    parameter `.grad` is never touched (torch.autograd.grad w.r.t. the input only).
    """
    with guarded(model, x, target, freeze=not create_graph) as (x, target):
        return input_gradient(model, x, target, create_graph)


@ATTRIBUTIONS.register("input_x_gradient", paper="arXiv 1605.01713", multi_sample=False, output="input",
                       images_only=False, description="input times its gradient, x * d f(x)_t / d x")
def input_x_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *,
                     create_graph: bool = False) -> torch.Tensor:
    """x times the input gradient of the target logit (Shrikumar et al., arXiv 1605.01713).

    Equals integrated gradients with a zero baseline for a linear model. Shapes and contract as `gradient`:
    [B, ...] in, [B, ...] out.
    """
    with guarded(model, x, target, freeze=not create_graph) as (x, target):
        return (x if create_graph else x.detach()) * input_gradient(model, x, target, create_graph)
