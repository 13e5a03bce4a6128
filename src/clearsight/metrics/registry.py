"""The metric registry.

Every entry is `metric(model, x, y, **options) -> values [B]` (one value per sample, NaN where undefined) and
declares on registration what reports, tests and the evaluation driver read instead of special-casing names:

    higher_is_better  the direction of the values
    needs_grad        whether it differentiates (else it also runs under torch.inference_mode)
    needs             what a call must be given, from NEEDS:
                        "attribution"  option `attribution`: a map of x (tensor), a callable
                                       (model, x, target) -> map, or a registered attribution name
                        "explainer"    option `attribution` as a callable or name only: the metric recomputes
                                       explanations (at other inputs or of another model)
                        "mask"         option `mask`: a per-sample mask like x (or like the map)
                        "reference"    option `target_map`: per-sample reference maps (e.g. IR targets)
                        "attack"       the metric attacks the model (its cost is the attack's)
                        "bounds"       interval bounds: the model must be a plain stack `clearsight.bounds` supports
    extras            per-sample dataset extras (`ArrayDataset.extras`) the driver passes as the same-named option
    context           dataset-level metadata the driver passes as options (e.g. "feature_groups"); never part of
                      a row's identity
    example           options for a small call (contract tests, `clearsight list`); a metric's required options
    paper             the arXiv id (None for plain accuracy)
    curves            optional `curves(model, x, y, **options) -> {name: [B, T]}`, the curves the values reduce
                      from; `from_curves` reduces them to the values [B] (the driver keeps the mean curves per row)
    pooled            optional `clearsight.metrics.neurons.Pool`-like factory: a statistic of the whole pool of
                      samples (neuron consistency), accumulated batch by batch; per-sample values are each
                      sample's share, whose mean is the statistic
    worst_case_over   the option holding an ordered attack list whose per-sample value is the worst case over its
                      attacks: the driver computes the row with the list one shorter (the suite's own row, or an
                      unreported one when the suite lacks it) and runs the last attack on the samples it left
                      robust
    description       one line for `clearsight list metrics`
"""

from clearsight.registry import Registry

METRICS: Registry = Registry("metric")

NEEDS = ("attribution", "explainer", "mask", "reference", "attack", "bounds")
