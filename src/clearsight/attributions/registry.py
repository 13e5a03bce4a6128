"""The attribution registry.

Every entry declares on registration (so reports and contract tests read metadata instead of names):

    paper         the arXiv id of the method
    multi_sample  True when the method averages over perturbed copies or path steps (chunked by `max_batch`)
    output        "input": shaped like x; "map": one channel [B, 1, H, W]
    images_only   True when the method needs image inputs [B, C, H, W]
    description   one line for `clearsight list attributions`
"""

from clearsight.registry import Registry

ATTRIBUTIONS: Registry = Registry("attribution")
