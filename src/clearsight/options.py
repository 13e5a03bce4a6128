"""What values an option takes: its type and range, declared once in its annotation and checked where it enters.

Every option a user sets (a TrainConfig field; a keyword-only parameter of an objective, model or dataset
loader) states its type in its annotation. A range rides on the type with `typing.Annotated`, and a set of
choices is a `Literal`::

    steps: Count = 40                          # an int >= 1
    mix: Fraction = 1.0                        # a float in [0, 1]
    eps: NonNegative | None = None             # a float >= 0, or None
    norm: Literal["linf", "l2"] = "linf"

`coerce(key, value, hint)` checks one value against such a hint and returns it in the hint's type (ints are
taken for floats, lists for tuples). Floats must be finite whatever the range says: NaN passes a check written
as `if value <= 0: raise` (the comparison is False), so the ranges here are written as what a value must
satisfy, which NaN never does. Config resolution (`clearsight.config`), `Registry.check_options` (objectives and
models built from Python) and TrainConfig call it before anything is written, so a bad value never starts a run.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from clearsight.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """lo <= value <= hi (strict where `*_open`); None is unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    finite: bool = True  # False admits +-inf where the range does (a norm's order p = inf); NaN never

    def admits(self, value: float) -> bool:
        above = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        below = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return above and below

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        return f"{'<' if self.hi_open else '<='} {_num(self.hi)}" if self.hi is not None else "any value"


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# The ranges options share. A name says what the option is, the Range what it admits.
Positive = Annotated[float, Range(0.0, lo_open=True)]                       # lr, a noise sigma
NonNegative = Annotated[float, Range(0.0)]                                  # a radius, a loss weight
Fraction = Annotated[float, Range(0.0, 1.0)]                                # a share of training, a mixing weight
ProperFraction = Annotated[float, Range(0.0, 1.0, hi_open=True)]           # dropout, momentum, val_fraction
OpenFraction = Annotated[float, Range(0.0, 1.0, lo_open=True, hi_open=True)]  # a test share: both splits non-empty
Count = Annotated[int, Range(1)]                                            # steps, samples, widths
Seed = Annotated[int, Range(0, 2**63 - 1)]                                  # what torch.manual_seed and numpy take
NormOrder = Annotated[float, Range(1.0, finite=False)]                     # p of an l_p norm, inf for l-inf


def coerce(key: str, value: Any, hint: Any) -> Any:
    """`value` checked against the type hint `hint` and returned in its type; ConfigError naming `key` if not.

    Understands Annotated ranges, Optional/Union, Literal, tuple[X, ...], list[X] and Sequence[X], float (ints
    accepted; finite), int, bool, str and Path (a str accepted); any other hint (Any, object, a class) admits
    every value.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    number = args[0] if origin is Annotated else hint
    if number in (float, int) and not isinstance(value, int | float) and getattr(value, "ndim", None) == 0:
        value = value.item()  # a numpy or torch scalar (np.int64(3), torch.tensor(0.1)): its Python number
    if origin is Annotated:
        try:
            infinite = isinstance(value, float) and math.isinf(value)
            out = value if infinite and not all(r.finite for r in args[1:] if isinstance(r, Range)) else \
                coerce(key, value, args[0])
        except ConfigError:  # say the whole rule ("a finite number >= 0"), not only the type's part of it
            raise ConfigError(f"{key} must be {describe(hint)}, got {value!r}") from None
        for rule in args[1:]:
            if isinstance(rule, Range) and not rule.admits(out):
                raise ConfigError(f"{key} must be {describe(hint)}, got {value!r}")
        return out
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(key, value, arg)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{key} must be {describe(hint)}, got {value!r}")
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}"
                          f"{did_you_mean(value, [str(a) for a in args])}")
    if origin in (tuple, list, Sequence) and args and (origin is not tuple or args[-1] is Ellipsis):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list of {describe(args[0])}, got {value!r}")
        items = [coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else list(items) if origin is list else type(value)(items)
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint in (str, bool):
        if type(value) is hint:
            return value
    elif hint is Path:
        if isinstance(value, str | Path):
            return value
    else:
        return value
    raise ConfigError(f"{key} must be {describe(hint)}, got {value!r} ({type(value).__name__})")


def did_you_mean(value: Any, valid: Sequence[str]) -> str:
    """" (did you mean 'x'?)" for the closest of `valid` to a mistyped `value`, else ""."""
    close = difflib.get_close_matches(str(value), list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe(hint: Any) -> str:
    """A hint in words, for error messages: "a number > 0", "an int >= 1 or None", "one of 'l2', 'linf'"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        ranges = [r for r in args[1:] if isinstance(r, Range)]
        what = "a number (inf allowed)" if args[0] is float and not all(r.finite for r in ranges) else describe(args[0])
        return " ".join([what, *map(str, ranges)])
    if origin in (typing.Union, types.UnionType):
        words = [describe(a) for a in args if a is not type(None)]
        return " or ".join(words + (["None"] if type(None) in args else []))
    if origin is typing.Literal:
        return f"one of {', '.join(map(repr, args))}"
    if origin in (tuple, list, Sequence) and args and (origin is not tuple or args[-1] is Ellipsis):
        return f"a list of {describe(args[0])}"
    names = {float: "a finite number", int: "an int", bool: "true or false", str: "a string", Path: "a path"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


@functools.cache
def option_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The annotations (with their Annotated ranges) of `fn`'s keyword-only parameters; {} where they cannot be
    evaluated (an entry registered by a user with annotations naming types its module does not import: its values
    are then not checked)."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except (NameError, TypeError):
        return {}
    params = inspect.signature(fn).parameters.values()
    return {p.name: hints[p.name] for p in params if p.kind is p.KEYWORD_ONLY and p.name in hints}


def check_values(prefix: str, values: Mapping[str, Any], hints: Mapping[str, Any]) -> None:
    """Check each of `values` that has a hint; messages name an option `prefix + key` ("objective.steps")."""
    for key, value in values.items():
        if key in hints:
            coerce(f"{prefix}{key}", value, hints[key])


__all__ = ["Count", "Fraction", "NonNegative", "NormOrder", "OpenFraction", "Positive", "ProperFraction", "Range",
           "Seed", "check_values", "coerce", "describe", "did_you_mean", "option_hints"]
