"""clearsight: train neural networks whose explanations can be trusted, and measure how far they can be.

    import clearsight as cs
    train = cs.data.load("mnist-mini", split="train")
    model = cs.models.build("small-cnn", num_classes=10)
    cs.fit(model, cs.objectives.build("standard"), train, epochs=2, out_dir="runs/first")
    cs.evaluate(model, cs.data.load("mnist-mini", split="test"))   # {"accuracy": ..., "robust_accuracy/...": ...}
"""

from __future__ import annotations

__version__ = "0.1.0"

from clearsight import (
           attacks,
           attributions,
           bounds,
           data,
           errors,
           metrics,
           models,
           neurons,
           objectives,
           registry,
           results,
           study,
)
from clearsight.engine import evaluate, evaluate_rows, fit, predict

__all__ = ["__version__", "attacks", "attributions", "bounds", "data", "errors", "evaluate", "evaluate_rows", "fit",
           "metrics", "models", "neurons", "objectives", "predict", "registry", "results", "study"]
