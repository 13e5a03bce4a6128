"""Interpretation Regularization (Noack et al., arXiv 1912.03430) [paper + code]."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from clearsight.checks import check_radius
from clearsight.errors import ConfigError, DataError
from clearsight.objectives.base import OBJECTIVES, LossOutput, cross_entropy_only
from clearsight.options import NonNegative

Magnitude = Literal["batch_frobenius", "mean_l2"]
MAGNITUDES: tuple[str, ...] = get_args(Magnitude)


@OBJECTIVES.register("ir", needs_double_backprop=True, paper="arXiv 1912.03430",
                     standard_at=({"lambda_cs": 0.0, "lambda_gm": 0.0},), extras={"target_map": "targets"},
                     description="CE + lambda_cs * (1 - cos(input gradient, target map)) + lambda_gm * "
                                 "gradient magnitude (Interpretation Regularization, Noack et al.)")
def ir(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lambda_cs: NonNegative = 3.0,
       lambda_gm: NonNegative = 0.15, magnitude: Magnitude = "batch_frobenius", absolute: bool = False,
       targets: str | None = None,
       **batch: object) -> LossOutput:
    """CE + lambda_cs * (1 - mean_i cos(g_i, r_i)) + lambda_gm * ||g|| (Noack et al., arXiv 1912.03430).

    g_i = d z_y / d x_i is the signed input gradient of the true-class logit, taken with create_graph=True (one
    vector-Jacobian product; the penalty is then differentiated once more), in the mode the engine set (the
    authors' code differentiates the training-mode network). The per-sample gradients come from one backward
    pass of the batch's summed true-class logits; that is exact when samples do not interact, which train-mode
    batch norm breaks (resnet18: each g_i then also carries the other samples' share through the batch
    statistics). r_i is sample i's target map, the batch extra `target_map`: the SmoothGrad map of a robust
    teacher (`clearsight targets`, which writes the file named by `targets`; the run loader attaches its maps to
    the data, so they follow every split and shuffle). The cosine of a zero map is 0.

    Args:
        lambda_cs: weight of the cosine term (authors, MNIST: 3; CIFAR-10: 0.75).
        lambda_gm: weight of the magnitude term (authors, MNIST: 0.15; CIFAR-10: 0.005).
        magnitude: "batch_frobenius", one Frobenius norm of g over the whole batch as in the authors' code (it
            grows with sqrt(batch size), so lambda_gm is tied to their batch of 50), or "mean_l2", the mean of the
            per-sample l2 norms (independent of the batch size).
        absolute: the paper's `abs` control, as the authors' code does it: the student's gradient is taken as
            |g| before the cosine and the magnitude (the magnitude is the same either way), to be compared with
            targets computed with `--abs` (per-copy |gradient| averaged); the run loader refuses a target file
            whose `abs` setting differs.
        targets: the target-map file (`clearsight targets TEACHER --out FILE`); read by the run loader, not here.

    Returns:
        LossOutput with logs ce, cos (the batch mean cosine; 0 without target maps), magnitude and the clean
        logits. With both weights 0 the loss is exactly `standard`'s; target maps are needed only when
        lambda_cs > 0.
    """
    check_radius(lambda_cs, "lambda_cs")
    check_radius(lambda_gm, "lambda_gm")
    if magnitude not in MAGNITUDES:
        raise ConfigError(f"ir magnitude must be one of {', '.join(MAGNITUDES)}, got {magnitude!r}")
    if lambda_cs == 0.0 and lambda_gm == 0.0:
        return cross_entropy_only(model, x, y, cos=0.0, magnitude=0.0)
    reference = batch.get("target_map")
    if lambda_cs > 0 and not isinstance(reference, torch.Tensor):
        raise DataError("objective 'ir' needs target maps for its cosine term (lambda_cs > 0): compute them with "
                        "`clearsight targets TEACHER_RUN --out FILE` and train with --set objective.targets=FILE "
                        "(in Python: attach them with clearsight.targets.attach(dataset, FILE))")
    if isinstance(reference, torch.Tensor) and reference.shape != x.shape:
        raise DataError(f"ir target maps have shape {tuple(reference.shape)}, the inputs {tuple(x.shape)}")
    x = x.detach().requires_grad_(True)  # a leaf of our own: the caller's x is never marked or modified
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    (g,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), x, create_graph=True)
    flat = g.flatten(1).abs() if absolute else g.flatten(1)
    size = flat.norm() if magnitude == "batch_frobenius" else flat.norm(dim=1).mean()
    loss = ce + lambda_gm * size
    logs = {"ce": float(ce.detach()), "cos": 0.0, "magnitude": float(size.detach())}
    if isinstance(reference, torch.Tensor):
        cos = F.cosine_similarity(flat, reference.flatten(1).to(flat.dtype), dim=1, eps=1e-12).mean()
        loss = loss + lambda_cs * (1.0 - cos)
        logs["cos"] = float(cos.detach())
    return LossOutput(loss, logs, logits.detach())
