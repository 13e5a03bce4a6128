"""Progress of long work: a bar on a terminal, plain lines otherwise (DESIGN.md), or nothing.

    report = reporter("auto")              # "auto", "bar", "lines" or "none"
    bar = report.bar(total, "evaluate")    # .update(n), .close(); a no-op without bars
    report.line({"metric": key, "value": 0.93, "seconds": 12.0})
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

from clearsight.errors import ConfigError

MODES = ("auto", "bar", "lines", "none")


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass


@dataclasses.dataclass
class Reporter:
    bars: bool
    lines: bool

    def bar(self, total: int, desc: str) -> Any:
        if not self.bars:
            return _NoBar()
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)

    def line(self, row: Mapping[str, Any]) -> None:
        if self.lines:
            parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()]
            print(" | ".join(parts), file=sys.stderr, flush=True)


def reporter(mode: str, *, is_main: bool = True) -> Reporter:
    """A bar on a terminal (stderr is a tty) for "auto", plain lines otherwise; silent off the main process."""
    if mode not in MODES:
        raise ConfigError(f"unknown progress mode {mode!r}; valid modes: {', '.join(MODES)}")
    if not is_main or mode == "none":
        return Reporter(False, False)
    bars = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
    return Reporter(bars, True)
