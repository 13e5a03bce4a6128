"""Metrics: plain functions `metric(model, x, y, **options) -> per-sample tensor [B]`, registered with metadata
(`higher_is_better`, what they need, the paper; see `clearsight.metrics.registry`) so reports, tests and the
evaluation driver read it instead of special-casing names.

    accuracy, robust_accuracy                                   accuracy.py
    certified_accuracy, delta_bound, certified_delta, certified_topk    certified.py (interval bounds)
    deletion_auc, insertion_auc, pixel_flipping                 curves.py
    faithfulness_correlation, infidelity                        faithfulness.py
    gini, entropy                                               complexity.py
    alignment, alignment_cosine, target_cosine                  alignment.py
    max_sensitivity, avg_sensitivity, topk_intersection, rank_correlation    robustness.py
    relevance_mass, relevance_rank, pointing_game, decoy_mass   localisation.py
    randomisation                                               sanity.py
    neuron_consistency, neuron_sensitivity                      neurons.py

`attribution=` is a map of x, a callable `(model, x, target) -> map`, or a registered attribution name
(`clearsight.metrics.maps`). Suites (`clearsight.metrics.suites`) are the rows `clearsight.evaluate` computes:
"clean", "quick" (default), "full", "certified", or a suite given as data.
"""

from __future__ import annotations

from typing import Any

from clearsight.metrics.accuracy import accuracy, robust_accuracy
from clearsight.metrics.alignment import alignment, alignment_cosine, target_cosine
from clearsight.metrics.certified import certified_accuracy, certified_delta, certified_topk, delta_bound
from clearsight.metrics.complexity import entropy, gini
from clearsight.metrics.curves import deletion_auc, insertion_auc, pixel_flipping
from clearsight.metrics.faithfulness import faithfulness_correlation, infidelity
from clearsight.metrics.localisation import decoy_mass, pointing_game, relevance_mass, relevance_rank
from clearsight.metrics.neurons import neuron_consistency, neuron_sensitivity
from clearsight.metrics.registry import METRICS, NEEDS
from clearsight.metrics.robustness import avg_sensitivity, max_sensitivity, rank_correlation, topk_intersection
from clearsight.metrics.sanity import randomisation
from clearsight.metrics.suites import SUITE_NAMES, Row, Suite, certified_suite, suite


def get(name: str) -> Any:
    """The metric registered as `name`."""
    return METRICS.get(name)


__all__ = [
    "METRICS",
    "NEEDS",
    "SUITE_NAMES",
    "Row",
    "Suite",
    "accuracy",
    "alignment",
    "alignment_cosine",
    "avg_sensitivity",
    "certified_accuracy",
    "certified_delta",
    "certified_suite",
    "certified_topk",
    "decoy_mass",
    "deletion_auc",
    "delta_bound",
    "entropy",
    "faithfulness_correlation",
    "get",
    "gini",
    "infidelity",
    "insertion_auc",
    "max_sensitivity",
    "neuron_consistency",
    "neuron_sensitivity",
    "pixel_flipping",
    "pointing_game",
    "randomisation",
    "rank_correlation",
    "relevance_mass",
    "relevance_rank",
    "robust_accuracy",
    "suite",
    "target_cosine",
    "topk_intersection",
]
