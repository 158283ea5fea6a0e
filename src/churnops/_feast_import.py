"""Feast imported without typeguard's instrumentation of its own functions.

Feast decorates its classes with typeguard's `@typechecked`, and typeguard 4 instruments each
decorated function by parsing and compiling its whole module's source again: 242 times on
`import feast`, which then took 14-21 s here beside a running test suite (4-7 s without), in
every process that touches the feature store (each step, each Airflow task, each server start).
With the decorator left out for Feast's own objects, Feast runs the same code and only stops
checking its arguments' types at run time; every other user of typeguard keeps its checks.

`install()` puts a finder first on `sys.meta_path` that does this once, the first time anything
imports `feast`, so a process that never uses Feast does not even import typeguard.
"""

from __future__ import annotations

import functools
import sys
from typing import Any


class _BeforeFeast:
    """A meta-path finder that finds nothing: it only prepares typeguard before Feast loads."""

    def __init__(self) -> None:
        self.done = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if not self.done and name.partition(".")[0] == "feast":
            self.done = True  # (the finder stays listed: leaving `sys.meta_path` mid-search skips a finder)
            unchecked_for("feast")
        return None


def unchecked_for(package: str) -> None:
    """Make typeguard's `typechecked` leave objects defined in `package` as they are."""
    try:
        import typeguard
    except ImportError:
        return
    checked = typeguard.typechecked
    if getattr(checked, "churnops_skips", None) == package:
        return

    def typechecked(target: Any = None, **options: Any) -> Any:
        if target is None:
            return functools.partial(typechecked, **options)
        if str(getattr(target, "__module__", "")).partition(".")[0] == package:
            return target
        return checked(target, **options)

    typechecked.churnops_skips = package  # type: ignore[attr-defined]
    typeguard.typechecked = typechecked


def install() -> None:
    """Prepare typeguard when Feast is first imported (see the module docstring)."""
    if "feast" in sys.modules:  # too late: it is instrumented already
        return
    if not any(isinstance(finder, _BeforeFeast) for finder in sys.meta_path):
        sys.meta_path.insert(0, _BeforeFeast())
