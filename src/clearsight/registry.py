"""One generic registry for every pluggable kind (datasets, models, objectives, attributions, attacks, metrics).

An entry is a callable plus metadata declared where it is registered, so tools read metadata instead of
special-casing names::

    METRICS = Registry("metric")

    @METRICS.register("deletion_auc", higher_is_better=False)
    def deletion_auc(model, x, y, *, attribution): ...

    METRICS.get("deletion_auc")          # the function
    METRICS.meta("deletion_auc")         # {"higher_is_better": False}
    METRICS.names()                      # sorted names
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from clearsight.errors import ConfigError, UnknownNameError
from clearsight.options import check_values, did_you_mean, option_hints

T = TypeVar("T", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered callable with its name and metadata."""

    name: str
    fn: T
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name -> callable map with metadata; unknown names raise an error that lists the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator registering `fn` under `name` with `meta`; the function is returned unchanged."""

        def decorator(fn: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self._entries[name].fn!r})")
            self._entries[name] = Entry(name, fn, dict(meta))
            return fn

        return decorator

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def get(self, name: str) -> T:
        """The callable registered as `name`."""
        return self.entry(name).fn

    def meta(self, name: str) -> dict[str, Any]:
        """A copy of the metadata of `name`."""
        return dict(self.entry(name).meta)

    def build(self, name: str, /, **kwargs: Any) -> Any:
        """Call the entry `name` with `kwargs` (for factories such as models)."""
        return self.get(name)(**kwargs)

    def options(self, name: str, *, exclude: Iterable[str] = ()) -> dict[str, Any]:
        """The keyword-only parameters of entry `name` (its configurable options) with their defaults."""
        skip = set(exclude)
        params = inspect.signature(self.get(name)).parameters.values()
        return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in skip}

    def check_options(self, name: str, options: Mapping[str, Any], *, exclude: Iterable[str] = ()) -> None:
        """Refuse option names that entry `name` does not have (listing the valid ones, with the closest), and
        values outside what the entry's annotations declare (`clearsight.options`: type, finite, range)."""
        valid = self.options(name, exclude=exclude)
        unknown = sorted(set(options) - set(valid))
        if unknown:
            close = did_you_mean(unknown[0], list(valid))
            raise ConfigError(f"{self.kind} {name!r} has no option {unknown[0]!r}{close}; valid options: "
                              f"{', '.join(valid) or '(none)'}")
        check_values(f"{self.kind} {name!r} option ", options, option_hints(self.get(name)))

    def bind(self, name: str, /, **options: Any) -> functools.partial:
        """Entry `name` with `options` bound (checked against its keyword-only parameters)."""
        self.check_options(name, options)
        return functools.partial(self.get(name), **options)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid {self.kind}s: {', '.join(self.names())}"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
