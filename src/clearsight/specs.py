"""(name, options) pairs: how suites, configs and result rows name a registered entry with its options.

An attribution in a suite row is one spec, e.g. ("smoothgrad", {"n": 50}); an attack list is a list of specs,
e.g. [("pgd", {}), ("apgd", {"loss": "dlr", "steps": 100})]. Users may write a spec in any of the forms YAML
gives naturally; `spec` turns each into the one tuple form, so nothing downstream parses strings:

    "pgd"                                  -> ("pgd", {})
    ("apgd", {"loss": "dlr"})              -> ("apgd", {"loss": "dlr"})
    ["apgd", {"loss": "dlr"}]              -> ("apgd", {"loss": "dlr"})
    {"name": "apgd", "loss": "dlr"}        -> ("apgd", {"loss": "dlr"})

`spec_text` renders a spec for a row key only (identity, never read back): "apgd:loss=dlr", and a list
"pgd+apgd:loss=dlr,steps=100", the form result keys have always had.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from clearsight.errors import ConfigError

Spec = tuple[str, dict[str, Any]]


def spec(value: Any, *, what: str = "entry") -> Spec:
    """The (name, options) form of `value` (see the module docstring); a clear error for anything else."""
    if isinstance(value, str) and value:
        return value, {}
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        return value["name"], {str(k): v for k, v in value.items() if k != "name"}
    if _is_pair(value):
        return value[0], dict(value[1])
    raise ConfigError(f"{what} must be a name, a (name, options) pair or a mapping with 'name', got {value!r}")


def spec_list(value: Any, *, what: str = "entry") -> list[Spec]:
    """A list of specs; a single spec (a name, pair or mapping) counts as a list of one."""
    if isinstance(value, str | Mapping) or _is_pair(value):
        return [spec(value, what=what)]
    if isinstance(value, Sequence) and value:
        return [spec(v, what=what) for v in value]
    raise ConfigError(f"{what} must be a non-empty list of specs such as [('pgd', {{}}), ('apgd', {{'loss': 'dlr'}})], "
                      f"got {value!r}")


def _is_pair(value: Any) -> bool:
    # ["pgd", {"name": "apgd"}] is a list of two specs, not pgd with an option called name
    return (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
            and isinstance(value[0], str) and isinstance(value[1], Mapping) and "name" not in value[1])


def is_spec(value: Any) -> bool:
    return (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], dict))


def spec_text(value: Spec | Sequence[Spec]) -> str:
    """"name" or "name:k=v,k=v" (options sorted); a list of specs joined by "+"."""
    if isinstance(value, tuple) and is_spec(value):
        name, options = value[0], value[1]
        assert isinstance(name, str) and isinstance(options, dict)
        inner = ",".join(f"{k}={value_text(v)}" for k, v in sorted(options.items()))
        return f"{name}:{inner}" if inner else name
    return "+".join(spec_text(s) for s in value)  # type: ignore[arg-type]


def value_text(value: Any) -> str:
    """An option value as it appears in a row key: specs (also in their JSON form, [name, options] lists) as
    above, everything else as Python prints it."""
    if _pair(value):
        return spec_text((value[0], value[1]))
    if isinstance(value, list | tuple) and value and all(_pair(v) for v in value):
        return spec_text([(v[0], v[1]) for v in value])
    return f"{value}"


def _pair(value: Any) -> bool:
    return (isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], dict))


def plain(value: Any) -> Any:
    """Specs as [name, options] lists and tuples as lists, recursively: the JSON/YAML form of an option."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
