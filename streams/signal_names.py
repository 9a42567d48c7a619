"""Which signal names exist: the names every emitter declares, checked both ways.

Signal names are ``<family>.<measure>`` (``latency.p99_ms``, ``drift.psi``).
A detector declares the names it may emit in ``Detector.signals``; the
shared detector contract test fails when one emits a name it did not
declare, and the rules loader refuses a rule whose ``signal`` matches no
declared name (a misspelt name would otherwise load and never fire).

The known names are read, not listed here: every :class:`~llmpulse.detectors.base.Detector`
subclass in the shipped detector families (each ``detectors.<family>``
package), every other subclass imported by then (a user's own detector), and
the names declared with :func:`declare_signals` by emitters that are not
detectors (the monitor's own health, :data:`HEALTH_SIGNALS`). A new family
is known as soon as its detectors declare their names.

>>> names = known_signals()
>>> {"latency.p99_ms", "drift.psi", "llmpulse.lag"} <= names
True
>>> unknown_signal("latency.p99ms", names)
"unknown signal 'latency.p99ms' (did you mean 'latency.p99_ms'?)"
>>> unknown_signal("drift.*", names) is None, unknown_signal("drfit.*", names)
(True, "no known signal matches 'drfit.*' (did you mean 'drift.*'?)")
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Iterable, Set
from fnmatch import fnmatchcase
from typing import Any

import llmpulse.detectors
from llmpulse.detectors.base import Detector

__all__ = ["HEALTH_SIGNALS", "declare_signals", "known_signals", "unknown_signal"]

HEALTH_SIGNALS: tuple[str, ...] = (
    "llmpulse.lag",
    "llmpulse.events_per_s",
    "llmpulse.deadletter_rate",
    "llmpulse.store_errors",
    "llmpulse.window_close_delay_s",
    "llmpulse.feedback_unmatched",
    "llmpulse.notify_failures",
)
"""The monitor's own health signals (``app="llmpulse"``), emitted by the worker."""

_declared: set[str] = set(HEALTH_SIGNALS)
_families_loaded = False


def declare_signals(names: Iterable[str]) -> None:
    """Make names known that an emitter other than a detector produces."""
    for name in names:
        if not isinstance(name, str) or "." not in name.strip(".") or any(c in name for c in "*?[]"):
            raise ValueError(f"a signal name is '<family>.<measure>', got {name!r}")
        _declared.add(name)


def _load_families() -> None:
    global _families_loaded
    if _families_loaded:
        return
    # every family: the packages (drift, bias, ...) and the single-module ones (agent)
    for mod in pkgutil.iter_modules(llmpulse.detectors.__path__, "llmpulse.detectors."):
        if not mod.name.rsplit(".", 1)[-1].startswith("_"):
            importlib.import_module(mod.name)
    _families_loaded = True


def _subclasses(cls: type[Any]) -> Iterable[type[Any]]:
    stack = list(cls.__subclasses__())
    seen: set[type[Any]] = set()
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        seen.add(c)
        stack.extend(c.__subclasses__())
        yield c


def known_signals() -> frozenset[str]:
    """Every declared signal name (imports the shipped detector families once)."""
    _load_families()
    names = set(_declared)
    for cls in _subclasses(Detector):
        declared = cls.__dict__.get("signals", ())
        if isinstance(declared, (tuple, list, frozenset, set)):
            names.update(n for n in declared if isinstance(n, str))
    return frozenset(names)


def unknown_signal(pattern: str, known: Set[str]) -> str | None:
    """``None`` when ``pattern`` (a name or a glob) matches a known name, else
    the reason, with the closest known name when one is close."""
    is_glob = any(c in pattern for c in "*?[")
    if is_glob:
        if any(fnmatchcase(name, pattern) for name in known):
            return None
        families = sorted({n.split(".", 1)[0] + "." + "*" for n in known})
        close = difflib.get_close_matches(pattern, [*families, *sorted(known)], n=1)
        what = f"no known signal matches {pattern!r}"
    else:
        if pattern in known:
            return None
        close = difflib.get_close_matches(pattern, sorted(known), n=1)
        what = f"unknown signal {pattern!r}"
    return what + (f" (did you mean {close[0]!r}?)" if close else "")
