"""The attack registry. Every entry is `attack(model, x, y, *, eps, ...) -> x_adv` with metadata:

    norms        the threat models it supports, e.g. ("linf", "l2")
    goal         "prediction" (changes the predicted class) or "explanation" (changes the attribution)
    paper        the arXiv id of the method
    description  one line for `clearsight list attacks`
"""

from clearsight.registry import Registry

ATTACKS: Registry = Registry("attack")
