"""Grad-CAM: a class-discriminative map from the gradient-weighted channels of a convolutional layer."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clearsight.attributions.guard import guarded, target_scores
from clearsight.attributions.registry import ATTRIBUTIONS
from clearsight.errors import ConfigError, DataError
from clearsight.models import get_layer


@ATTRIBUTIONS.register("grad_cam", paper="arXiv 1610.02391", multi_sample=False, output="map", images_only=True,
                       description="ReLU of the gradient-weighted channel sum of a conv layer, upsampled")
def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, layer: str | nn.Module = "features",
             create_graph: bool = False) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., arXiv 1610.02391) on the output A [B, K, h, w] of a named layer.

    alpha_k = mean over (h, w) of d f_t / d A_k; map = ReLU(sum_k alpha_k A_k), upsampled bilinearly
    (align_corners=False, as torch/Captum interpolate) to the input's H x W.

    Args:
        x: images [B, C, H, W] in [0, 1]; never modified.
        target: int64 [B].
        layer: a name resolved by `clearsight.models.get_layer` ("features" = the last conv map of every CNN
            in the zoo) or the module itself. It must run once per forward and return [B, K, h, w].
        create_graph: keep the graph so a loss of the map reaches the parameters (those before the layer
            through A, those after it through alpha).

    Returns:
        [B, 1, H, W], non-negative. The temporary forward hook is removed also on error.
    """
    module = get_layer(model, layer) if isinstance(layer, str) else layer
    if not isinstance(module, nn.Module):
        raise ConfigError(f"grad_cam layer must be a layer name or an nn.Module, got {type(layer).__name__}")
    with guarded(model, x, target, freeze=not create_graph) as (x, target):
        if x.dim() != 4:
            raise DataError(f"grad_cam needs images [B, C, H, W], got x of shape {tuple(x.shape)}")
        captured: list[torch.Tensor] = []

        def keep(_module: nn.Module, _inputs: Any, out: Any) -> torch.Tensor | None:
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ConfigError(f"grad_cam needs a convolutional layer with output [B, K, h, w]; layer {layer!r} "
                                  f"returns {shape}")
            if not create_graph or not out.requires_grad:
                # start the graph at A: nothing before the layer is recorded or backpropagated (also when the
                # layers before it are frozen and x needs no grad, so that A itself has no graph)
                out = out.detach().requires_grad_()
            captured.append(out)
            # the model goes on with a copy: an in-place op after the layer (ReLU(inplace=True)) must not
            # overwrite the captured A, nor act in place on a leaf that requires grad
            return out.clone()

        handle = module.register_forward_hook(keep)
        try:
            logits = model(x if create_graph else x.detach())
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ConfigError(f"grad_cam layer {layer!r} ran {len(captured)} times in one forward pass; "
                              "choose a layer that runs exactly once")
        (acts,) = captured
        score = target_scores(logits, target).sum()
        if not score.requires_grad:
            grads = torch.zeros_like(acts)
        else:
            (grads,) = torch.autograd.grad(score, acts, create_graph=create_graph, allow_unused=True,
                                           materialize_grads=True)
        with torch.set_grad_enabled(create_graph):
            alpha = grads.mean(dim=(2, 3), keepdim=True)
            cam = F.relu((alpha * acts).sum(dim=1, keepdim=True))
            return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
