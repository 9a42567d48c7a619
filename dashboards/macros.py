"""Expand the Grafana ClickHouse macros for the embedded store.

The embedded page and ``llmpulse report`` run the panels' SQL without
Grafana, so this module does what the data source plugin does, for the
macros the panels use:

* ``$__timeFilter(col)`` → ``col BETWEEN toDateTime64(from) AND toDateTime64(to)``
* ``$__timeInterval(col)`` → ``toStartOfInterval(col, INTERVAL n second)``
* ``$__interval_s`` → ``n``; ``$__fromTime`` / ``$__toTime`` → the bounds
* ``$__conditionalAll(cond, $var)`` → ``1=1`` when the variable is All
  (or unset), else ``cond`` with ``${var:singlequote}`` → quoted values.

Anything else that looks like a macro or a variable raises
:class:`MacroError`, so a panel cannot silently run with a hole in it.

>>> expand("SELECT $__timeInterval(ts) AS t FROM signals WHERE $__timeFilter(ts)"
...        " AND $__conditionalAll(app IN (${app:singlequote}), $app)",
...        start=1_700_000_000, end=1_700_003_600, variables={"app": ["chat", "o'k"]})
"SELECT toStartOfInterval(ts, INTERVAL 30 second) AS t FROM signals WHERE ts BETWEEN toDateTime64(1700000000.000, 3, 'UTC') AND toDateTime64(1700003600.000, 3, 'UTC') AND app IN ('chat','o\\\\'k')"
>>> expand("SELECT 1 WHERE $__conditionalAll(app IN (${app:singlequote}), $app)",
...        start=0, end=60)
'SELECT 1 WHERE 1=1'
>>> parse_time("now-1h", now=1_700_003_600.0), parse_time("2023-11-14T22:13:20Z")
(1700000000.0, 1700000000.0)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

__all__ = ["ALL", "MacroError", "auto_interval", "expand", "parse_time", "quote"]

ALL = "$__all"
"""The value of a variable set to All (Grafana's own marker)."""

_NICE_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
           43200, 86400)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class MacroError(ValueError):
    """A macro or variable the expander does not know, or a malformed one."""


def quote(value: str) -> str:
    r"""A ClickHouse string literal.

    >>> print(quote("it's"), quote("a\\b"))
    'it\'s' 'a\\b'
    """
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def auto_interval(start: float, end: float, max_points: int = 120) -> int:
    """A round bucket width (seconds) giving at most about ``max_points`` buckets.

    >>> auto_interval(0, 3600), auto_interval(0, 86400), auto_interval(0, 10)
    (30, 900, 1)
    """
    span = max(end - start, 1.0)
    want = span / max(max_points, 1)
    for s in _NICE_S:
        if s >= want:
            return s
    return int(math.ceil(want / 86400.0)) * 86400


_LAST_S = 253402300799.0  # 9999-12-31T23:59:59Z


def parse_time(text: str | float | int, now: float | None = None) -> float:
    """Epoch seconds from ``now``, ``now-15m``, epoch seconds or ms, or ISO 8601 (UTC if
    naive), between 1970 and 9999:

    >>> parse_time("nan")
    Traceback (most recent call last):
    ...
    llmpulse.dashboards.macros.MacroError: time 'nan': not a time between 1970 and 9999
    """
    value = _parse_time(text, now)
    if not 0.0 <= value <= _LAST_S:  # NaN too
        raise MacroError(f"time {text!r}: not a time between 1970 and 9999")
    return value


def _parse_time(text: str | float | int, now: float | None = None) -> float:
    if isinstance(text, (int, float)):
        value = float(text)
        return value / 1000.0 if value > 1e11 else value
    s = text.strip()
    m = re.fullmatch(r"now(?:\s*-\s*(\d+(?:\.\d+)?)\s*([smhdw]))?", s)
    if m:
        base = datetime.now(UTC).timestamp() if now is None else float(now)
        return base - (float(m.group(1)) * _UNITS[m.group(2)] if m.group(1) else 0.0)
    try:
        return _parse_time(float(s))
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise MacroError(
            f"time {text!r}: use now, now-<n><s|m|h|d|w>, epoch seconds or ms, or ISO 8601"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _ts(t: float) -> str:
    return f"toDateTime64({t:.3f}, 3, 'UTC')"


def _call_args(sql: str, open_at: int) -> tuple[list[str], int]:
    """Split the top-level arguments of the call whose '(' is at ``open_at``."""
    depth, quote_on, args, cur = 0, False, [], []
    i = open_at
    while i < len(sql):
        c = sql[i]
        if quote_on:
            cur.append(c)
            if c == "\\" and i + 1 < len(sql):
                cur.append(sql[i + 1])
                i += 1
            elif c == "'":
                quote_on = False
        elif c == "'":
            quote_on = True
            cur.append(c)
        elif c == "(":
            depth += 1
            if depth > 1:
                cur.append(c)
        elif c == ")":
            depth -= 1
            if depth == 0:
                args.append("".join(cur).strip())
                return args, i + 1
            cur.append(c)
        elif c == "," and depth == 1:
            args.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    raise MacroError(f"unbalanced parentheses after {sql[max(0, open_at - 20):open_at]!r}")


def _values(variables: Mapping[str, str | Sequence[str] | None], name: str) -> list[str] | None:
    """The selected values, or None for All / unset."""
    raw = variables.get(name)
    if raw is None:
        return None
    vals = [raw] if isinstance(raw, str) else list(raw)
    vals = [v for v in vals if v != ""]
    if not vals or ALL in vals or "All" in vals:
        return None
    return vals


def _variable(variables: Mapping[str, str | Sequence[str] | None], name: str,
              fmt: str | None) -> str:
    if fmt != "singlequote":
        raise MacroError(f"variable ${{{name}:{fmt}}}: only the :singlequote format is supported")
    vals = _values(variables, name)
    if vals is None:
        raise MacroError(f"variable {name} is All here: wrap it in $__conditionalAll")
    return ",".join(quote(v) for v in vals)


# one token of the panel SQL: a literal of the panel (copied as it is), a macro call, a
# macro without arguments, a variable, or anything else that looks like one (refused)
_TOKEN = re.compile(
    r"'(?:[^'\\]|\\.)*'"
    r"|\$__(?P<call>timeFilter|timeInterval|conditionalAll)\s*\("
    r"|\$__(?P<plain>interval_s|fromTime|toTime)(?!\w)"
    r"|\$\{(?P<var>\w+)(?::(?P<fmt>\w+))?\}"
    r"|\$(?P<unknown>__\w+|\w+)")


def expand(
    sql: str,
    *,
    start: float,
    end: float,
    variables: Mapping[str, str | Sequence[str] | None] | None = None,
    interval_s: int | None = None,
    max_points: int = 120,
) -> str:
    """The panel SQL with every macro and variable replaced by literals.

    One pass over the panel's own text: what a macro or a variable puts in is never
    read again, so a value that looks like a macro or a variable stays a value (read
    again, ``${model:singlequote}`` as the value of ``app`` became ``''<model>''``, and
    the model's text ran as SQL):

    >>> print(expand("SELECT 1 WHERE $__conditionalAll(app IN (${app:singlequote}), $app)"
    ...              " AND $__conditionalAll(model IN (${model:singlequote}), $model)",
    ...              start=0, end=60, variables={"app": "${model:singlequote}",
    ...                                          "model": ") OR 1=1 OR ("}))
    SELECT 1 WHERE app IN ('${model:singlequote}') AND model IN (') OR 1=1 OR (')
    """
    variables = variables or {}
    step = interval_s or auto_interval(start, end, max_points)
    return _expand(sql, variables, start, end, step)


def _expand(sql: str, variables: Mapping[str, str | Sequence[str] | None], start: float,
            end: float, step: int) -> str:
    out: list[str] = []
    pos = 0
    while (m := _TOKEN.search(sql, pos)) is not None:
        out.append(sql[pos:m.start()])
        pos = m.end()
        if (kind := m.group("call")) is not None:
            args, pos = _call_args(sql, m.end() - 1)
            if kind == "conditionalAll":
                name = re.fullmatch(r"\$\{?(\w+)\}?", args[1]) if len(args) == 2 else None
                if name is None:
                    raise MacroError(f"$__conditionalAll(condition, $variable): got {args}")
                out.append("1=1" if _values(variables, name.group(1)) is None
                           else _expand(args[0], variables, start, end, step))
            elif len(args) != 1 or not args[0]:
                raise MacroError(f"$__{kind}(column): got {args}")
            elif kind == "timeFilter":
                out.append(f"{args[0]} BETWEEN {_ts(start)} AND {_ts(end)}")
            else:
                out.append(f"toStartOfInterval({args[0]}, INTERVAL {step} second)")
        elif (plain := m.group("plain")) is not None:
            out.append(str(step) if plain == "interval_s"
                       else _ts(start) if plain == "fromTime" else _ts(end))
        elif m.group("var") is not None:
            out.append(_variable(variables, m.group("var"), m.group("fmt")))
        elif m.group("unknown") is not None:
            raise MacroError(f"unknown macro or variable ${m.group('unknown')} in panel SQL")
        else:
            out.append(m.group(0))  # a literal of the panel
    out.append(sql[pos:])
    return "".join(out)
