"""The metric registry. Entries declare `higher_is_better` and `needs_grad` (whether they differentiate)."""

from clearsight.registry import Registry

METRICS: Registry = Registry("metric")
