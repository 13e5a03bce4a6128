"""The model registry. Entries return the named parts of a model after its optional normalize layer."""

from clearsight.registry import Registry

MODELS: Registry = Registry("model")
