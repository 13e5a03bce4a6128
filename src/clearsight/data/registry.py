"""The dataset registry (kept apart so loader modules and `load` can both import it)."""

from clearsight.registry import Registry

DATASETS: Registry = Registry("dataset")
