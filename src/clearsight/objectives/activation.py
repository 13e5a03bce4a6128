"""Regularization of neural activation sensitivity (Moshe et al., arXiv 2211.08686) [paper: the idea; recon: the
details].

The paper regularizes how sensitive individual neurons are to small input perturbations, which it finds makes
explanations more interpretable and the model more robust; the same group's earlier work describes a
stochastic term that lowers the sensitivity of sampled neurons. Its full text was not available; the
reconstruction (METHODS.md), with which choices are ours:
- at each step, hidden layers L (`layers`; ours: every ReLU after the first) and k units per layer (`units`;
  ours: 8) are sampled, or with `mode="projection"` one random unit-norm direction over each whole layer;
- s = the sum of the sampled activations (or projections) over L, and the penalty is
  lam * mean_i ||d s / d x_i||_2^2 (ours: lam 1), taken with create_graph=True on the training forward pass
  itself (`clearsight.neurons.sensitivity_from`): one extra double backward per step;
- `with_jacobian` > 0 adds Hoffman et al.'s Jacobian term with that weight (the paper combines both; ours: 0).
The per-sample penalty of a model is `clearsight.neurons.activation_sensitivity` (the same sampling and
gradient code, `clearsight.neurons.summed_gradient`, with its own forward pass). The `neuron_sensitivity`
metric measures a related but different quantity, METHODS.md's mean over sampled units of ||d a_u / d x||_2
(`clearsight.neurons.unit_sensitivity`); its summed form is this penalty's square root for one layer.
A layer the model calls more than once in a forward pass is refused (ConfigError): its output is not one
activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clearsight.checks import check_radius
from clearsight.errors import ConfigError
from clearsight.neurons import MODES, Mode, capture, relu_layers, sensitivity_from
from clearsight.objectives.base import OBJECTIVES, LossOutput, cross_entropy_only
from clearsight.objectives.jacobian import frobenius_estimate
from clearsight.options import Count, NonNegative


@OBJECTIVES.register("activation-sensitivity", needs_double_backprop=True, paper="arXiv 2211.08686",
                     standard_at=({"lam": 0.0, "with_jacobian": 0.0},),
                     description="CE + lam * squared input-gradient norm of a random sum of hidden activations "
                                 "(regularization of neural activation sensitivity, Moshe et al.)")
def activation_sensitivity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lam: NonNegative = 1.0,
                           layers: list[str] | None = None, units: Count = 8, mode: Mode = "units",
                           with_jacobian: NonNegative = 0.0, **batch: object) -> LossOutput:
    """CE + lam * mean_i ||d s / d x_i||^2 (+ with_jacobian / 2 * ||J||_F^2 estimate); see the module docstring.

    Args:
        lam: weight of the sensitivity penalty (ours: 1).
        layers: names of the layers whose activations are sampled (`clearsight.models.get_layer`); None: every
            nn.ReLU after the first (small-cnn: features.relu2 and penultimate.relu).
        units: units sampled per layer and step (mode "units"), the same for the whole batch.
        mode: "units" or "projection" (a random unit-norm direction per layer).
        with_jacobian: weight of the added Jacobian term (one random projection, `jacobian`'s estimator); 0: none.

    Returns:
        LossOutput with logs ce, sensitivity (the batch mean of ||ds/dx||^2), jacobian and the clean logits. With
        lam = with_jacobian = 0 the loss is exactly `standard`'s.
    """
    check_radius(lam, "lam")
    check_radius(with_jacobian, "with_jacobian")
    if mode not in MODES:
        raise ConfigError(f"activation-sensitivity mode must be one of {', '.join(MODES)}, got {mode!r}")
    if lam == 0.0 and with_jacobian == 0.0:
        return cross_entropy_only(model, x, y, sensitivity=0.0, jacobian=0.0)
    names = list(layers) if layers is not None else relu_layers(model)
    x = x.detach().requires_grad_(True)  # a leaf of our own: the caller's x is never marked or modified
    with capture(model, names, once=True) as acts:  # hooks for this forward pass only, removed also on error
        logits = model(x)
    ce = F.cross_entropy(logits, y)
    loss, logs = ce, {"ce": float(ce.detach()), "sensitivity": 0.0, "jacobian": 0.0}
    if lam > 0:
        sensitivity = sensitivity_from(x, [acts[n][0] for n in names], units=units, mode=mode,
                                       create_graph=True).mean()
        loss = loss + lam * sensitivity
        logs["sensitivity"] = float(sensitivity.detach())
    if with_jacobian > 0:
        frobenius = frobenius_estimate(logits, x)
        loss = loss + with_jacobian / 2 * frobenius
        logs["jacobian"] = float(frobenius.detach())
    return LossOutput(loss, logs, logits.detach())
