"""Alert rules: which signals break which thresholds, for how long, and what then.

A rules file (YAML, documented in ``docs/rules.md``; the shipped default is
``llmpulse/rules/default.yaml``) lists :class:`Rule` entries. A rule matches
signals by name (exact or glob, ``drift.*``) and by app, model, model version
and dimension (globs), compares the value with a threshold (``op`` one of
``>``, ``>=``, ``<``, ``<=``) or, with ``change: true``, treats every "change
detected" signal as a breach. Persistence and flap control (``for``,
``resolve_for``, ``resolve_after``, ``cooldown``, ``max_fires_per_hour``) are
applied by :class:`~llmpulse.streams.alerting.AlertManager`; this module only says,
for one signal, whether a rule matches and whether the window breaches it.

Everything is validated when the file is loaded, and errors name the file,
the rule and the field:

>>> Rules.from_yaml('''
... rules:
...   - name: p99-latency
...     signal: latency.p99_ms
...     op: ">"
...     threshold: 4000
...     for: two
... ''', source="rules.yaml")
Traceback (most recent call last):
...
llmpulse.streams.rules.RulesError: rules.yaml: rule 'p99-latency': field 'for': must be an integer >= 1, got 'two'

A rule's ``signal`` must be (or, a glob, match) a name some detector or
other emitter declares (:mod:`llmpulse.streams.signal_names`), so a misspelt name is
refused instead of loading and never firing:

>>> Rules.from_yaml("rules: [{name: p99, signal: latency.p99ms, op: '>', threshold: 1}]",
...                 source="rules.yaml")
Traceback (most recent call last):
...
llmpulse.streams.rules.RulesError: rules.yaml: rule 'p99': field 'signal': unknown signal 'latency.p99ms' (did you mean 'latency.p99_ms'?)

A window breaches, is healthy, or is ignored (too few samples):

>>> from llmpulse.detectors.base import Signal
>>> rules = Rules.from_yaml('''
... rules:
...   - {name: slow, signal: "latency.p9*_ms", op: ">", threshold: 4000, min_n: 100}
... ''')
>>> [r.name for r in rules.matching(Signal("latency.p99_ms", 5200.0, n=900))]
['slow']
>>> rule = rules["slow"]
>>> [rule.evaluate(Signal("latency.p99_ms", v, n=n)).value for v, n in [(5200.0, 900), (900.0, 900), (9e9, 20)]]
['breach', 'healthy', 'ignored']

Values of the form ``${ENV_VAR}`` (or ``${ENV_VAR:-default}``) are taken
from the environment when the file is loaded; ``$${`` is a literal ``${``.
"""

from __future__ import annotations

import difflib
import enum
import math
import operator
import os
import re
from collections.abc import Callable, Iterator, Mapping, Set
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Any

from llmpulse.detectors.base import Signal
from llmpulse.streams.signal_names import known_signals, unknown_signal
from llmpulse.yaml_input import YamlInputError, load_yaml

__all__ = [
    "ACTIONS",
    "OPS",
    "SEVERITIES",
    "ChannelSpec",
    "Rule",
    "Rules",
    "RulesError",
    "Verdict",
    "parse_duration",
]

SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
"""Alert severities, least to most urgent."""

ACTIONS: tuple[str, ...] = ("notify", "retrain")
"""What a firing rule may do: page through the notifier, request a retrain."""

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}

CHANGE_RESOLVE_AFTER_S = 900.0
"""Default ``resolve_after`` of ``change: true`` rules: change detectors emit
only on detection, so there is no healthy window to resolve on."""

SUMMARY_FIELDS: tuple[str, ...] = (
    "rule", "signal", "value", "threshold", "op", "app", "model", "model_version",
    "dimension", "severity", "n", "window_s",
)


class RulesError(ValueError):
    """The rules file is invalid; the message names the file, rule and field."""


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One entry of the ``notify`` section, environment values filled in.

    The rule model only checks the name and that it is a mapping with a
    ``type``; :func:`llmpulse.streams.notify.build_channels` turns specs into channels
    and validates their fields (the model stays free of network code). The
    settings may hold credentials, so they stay out of ``repr``.

    >>> ChannelSpec("team", "slack", {"url": "https://hooks.example/T/x"})
    ChannelSpec(name='team', type='slack')
    """

    name: str
    type: str
    settings: Mapping[str, Any] = field(default_factory=dict, repr=False)


class Verdict(enum.Enum):
    """What one window means for one rule."""

    BREACH = "breach"
    HEALTHY = "healthy"
    IGNORED = "ignored"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or text like ``90s``, ``15m``, ``6h``, ``1d``.

    >>> parse_duration(30), parse_duration("15m"), parse_duration("1.5h")
    (30.0, 900.0, 5400.0)
    """
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        if value < 0 or not math.isfinite(value):
            raise ValueError(value)
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT[m.group(2)]
    raise ValueError(value)


@dataclass(frozen=True, slots=True)
class Rule:
    """One alert rule. Field names are the YAML keys, except ``for_``
    (YAML ``for``) and ``absolute`` (YAML ``abs``)."""

    name: str
    signal: tuple[str, ...]
    app: tuple[str, ...] = ("*",)
    model: tuple[str, ...] = ("*",)
    model_version: tuple[str, ...] = ("*",)
    dimension: tuple[str, ...] = ("*",)
    op: str = ">"
    threshold: float = 0.0
    change: bool = False
    absolute: bool = False
    for_: int = 1
    resolve_for: int = 1
    resolve_after: float | None = None
    min_n: int = 0
    require_significant: bool = True
    require_detail: tuple[tuple[str, Any], ...] = ()
    severity: str = "warning"
    cooldown: float = 900.0
    max_fires_per_hour: int = 4
    runbook: str = ""
    actions: tuple[str, ...] = ("notify",)
    channels: tuple[str, ...] = ()
    summary: str = ""
    description: str = ""

    def matches(self, s: Signal) -> bool:
        return (
            _any(self.signal, s.signal)
            and _any(self.app, s.app)
            and _any(self.model, s.model)
            and _any(self.model_version, s.model_version)
            and _any(self.dimension, s.dimension)
        )

    def evaluate(self, s: Signal) -> Verdict:
        """Breach, healthy, or ignored (value not finite, ``n < min_n``).

        With ``require_significant`` (default), a window whose detector says
        the evidence is weak (``detail.significant`` false or
        ``detail.small_sample`` true) is healthy, whatever its value; so is a
        window whose detail differs from ``require_detail`` (e.g. the drift
        test's own verdict, ``{drift: true}``).
        """
        value = float(s.value)
        if not math.isfinite(value) or s.n < self.min_n:
            return Verdict.IGNORED
        if self.require_significant:
            d = s.detail or {}
            if ("significant" in d and not d["significant"]) or bool(d.get("small_sample", False)):
                return Verdict.HEALTHY
        if self.require_detail:
            d = s.detail or {}
            if any(k not in d or d[k] != v for k, v in self.require_detail):
                return Verdict.HEALTHY
        x = abs(value) if self.absolute else value
        return Verdict.BREACH if OPS[self.op](x, self.threshold) else Verdict.HEALTHY

    def render_summary(self, s: Signal) -> str:
        """One line for humans: the rule's ``summary`` template or the default."""
        if self.summary:
            return self.summary.format(**self._summary_fields(s))
        where = f"{s.app}/{s.model}@{s.model_version}" + (f" [{s.dimension}]" if s.dimension else "")
        if self.change:
            return f"{s.signal}: change detected on {where}"
        value = f"|{s.signal}|" if self.absolute else s.signal
        return f"{value} = {s.value:.4g} {self.op} {self.threshold:.4g} on {where}"

    def _summary_fields(self, s: Signal) -> dict[str, Any]:
        return {
            "rule": self.name, "signal": s.signal, "value": s.value, "threshold": self.threshold,
            "op": self.op, "app": s.app, "model": s.model, "model_version": s.model_version,
            "dimension": s.dimension, "severity": self.severity, "n": s.n, "window_s": s.window_s,
        }

    @property
    def effective_resolve_after(self) -> float | None:
        if self.resolve_after is not None:
            return self.resolve_after
        return CHANGE_RESOLVE_AFTER_S if self.change else None


def _any(patterns: tuple[str, ...], value: str) -> bool:
    return any(fnmatchcase(value, p) for p in patterns)


class Rules:
    """A validated rule set, its notification channel specs and alert settings.

    ``dashboard_url`` is the base of the dashboard links put on alerts;
    ``retrain_window_s`` and ``retrain_pending_ttl_s`` configure
    :class:`~llmpulse.streams.retrain_trigger.RetrainTrigger`.
    """

    def __init__(
        self,
        rules: tuple[Rule, ...] | list[Rule],
        *,
        channels: tuple[ChannelSpec, ...] | list[ChannelSpec] = (),
        dashboard_url: str = "",
        retrain_window_s: float = 86400.0,
        retrain_pending_ttl_s: float = 6 * 3600.0,
        source: str = "<rules>",
    ) -> None:
        self.rules = tuple(rules)
        self.channels = tuple(channels)
        self.dashboard_url = dashboard_url
        self.retrain_window_s = retrain_window_s
        self.retrain_pending_ttl_s = retrain_pending_ttl_s
        self.source = source
        self._by_name = {r.name: r for r in self.rules}
        self._by_signal: dict[str, tuple[Rule, ...]] = {}

    # -- construction ---------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        signals: Set[str] | None = None,
    ) -> Rules:
        """Read and validate a rules file; :class:`RulesError` names what is wrong.

        ``signals``: the signal names a rule may use (default: every name a
        detector or other emitter declares, :func:`~llmpulse.streams.signal_names.known_signals`)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise RulesError(f"{p}: cannot read rules file: {exc.strerror or exc}") from None
        return cls.from_yaml(text, source=str(path), env=env, signals=signals)

    @classmethod
    def default(cls, *, env: Mapping[str, str] | None = None) -> Rules:
        """The rules shipped in ``llmpulse/rules/default.yaml``."""
        text = resources.files("llmpulse.rules").joinpath("default.yaml").read_text(encoding="utf-8")
        return cls.from_yaml(text, source="default.yaml", env=env)

    @classmethod
    def from_yaml(
        cls,
        text: str,
        *,
        source: str = "<rules>",
        env: Mapping[str, str] | None = None,
        signals: Set[str] | None = None,
    ) -> Rules:
        try:
            data = load_yaml(text)
        except YamlInputError as exc:
            raise RulesError(f"{source}: {exc}") from None
        return cls.from_dict(data if data is not None else {}, source=source, env=env, signals=signals)

    @classmethod
    def from_dict(
        cls,
        data: Any,
        *,
        source: str = "<rules>",
        env: Mapping[str, str] | None = None,
        signals: Set[str] | None = None,
    ) -> Rules:
        return _Parser(source, os.environ if env is None else env, signals).parse(data)

    # -- lookup ---------------------------------------------------------------

    def matching(self, s: Signal) -> list[Rule]:
        """Rules whose patterns all match ``s`` (name glob cached per signal name)."""
        by_name = self._by_signal.get(s.signal)
        if by_name is None:
            by_name = tuple(r for r in self.rules if _any(r.signal, s.signal))
            self._by_signal[s.signal] = by_name
        return [r for r in by_name if r.matches(s)]

    def __getitem__(self, name: str) -> Rule:
        return self._by_name[name]

    def get(self, name: str) -> Rule | None:
        return self._by_name.get(name)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __repr__(self) -> str:
        return (
            f"Rules(source={self.source!r}, rules={[r.name for r in self.rules]}, "
            f"channels={[c.name for c in self.channels]})"
        )


# -- parsing ---------------------------------------------------------------------

_TOP_KEYS = ("version", "defaults", "rules", "notify", "links", "retrain")
_RULE_KEYS = (
    "name", "description", "signal", "app", "model", "model_version", "dimension", "op",
    "threshold", "change", "abs", "for", "resolve_for", "resolve_after", "min_n",
    "require_significant", "require_detail", "severity", "cooldown", "max_fires_per_hour",
    "runbook", "actions", "channels", "summary",
)
_DEFAULTABLE = (
    "app", "model", "model_version", "dimension", "for", "resolve_for", "resolve_after",
    "min_n", "require_significant", "require_detail", "severity", "cooldown",
    "max_fires_per_hour", "actions", "channels",
)
_ENV = re.compile(r"\$(\$)?\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def _unknown(key: Any, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    return f"unknown field{f' (did you mean {close[0]!r}?)' if close else ''}"


@dataclass
class _Parser:
    source: str
    env: Mapping[str, str]
    signals: Set[str] | None = None

    def known(self) -> Set[str]:
        if self.signals is None:
            self.signals = known_signals()
        return self.signals

    def fail(self, where: str, message: str) -> RulesError:
        return RulesError(f"{self.source}: {where}{': ' if where else ''}{message}")

    def interpolate(self, obj: Any, where: str) -> Any:
        if isinstance(obj, str):
            def sub(m: re.Match[str]) -> str:
                if m.group(1):  # $${...} escapes interpolation
                    return m.group(0)[1:]
                name, default = m.group(2), m.group(3)
                if name in self.env:
                    return self.env[name]
                if default is not None:
                    return default
                raise self.fail(where, f"environment variable {name} is not set")
            return _ENV.sub(sub, obj)
        if isinstance(obj, list):
            return [self.interpolate(v, where) for v in obj]
        if isinstance(obj, Mapping):
            return {k: self.interpolate(v, where) for k, v in obj.items()}
        return obj

    def parse(self, data: Any) -> Rules:
        if not isinstance(data, Mapping):
            raise self.fail("", f"must be a mapping with a 'rules' list, got {type(data).__name__}")
        for key in data:
            if key not in _TOP_KEYS:
                raise self.fail(f"top-level key {key!r}", _unknown(key, _TOP_KEYS))
        version = data.get("version", 1)
        if version != 1:
            raise self.fail("field 'version'", f"only version 1 is known, got {version!r}")

        channels = self.parse_channels(data.get("notify") or {})
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, Mapping):
            raise self.fail("field 'defaults'", "must be a mapping of rule fields")
        for key in defaults:
            if key not in _DEFAULTABLE:
                raise self.fail(f"defaults: field {key!r}", _unknown(key, _DEFAULTABLE))
        defaults = self.interpolate(dict(defaults), "defaults")

        raw_rules = data.get("rules")
        if raw_rules is None:
            raw_rules = []
        if not isinstance(raw_rules, list):
            raise self.fail("field 'rules'", "must be a list of rules")
        rules: list[Rule] = []
        seen: set[str] = set()
        names = {c.name for c in channels}
        for i, raw in enumerate(raw_rules):
            rule = self.parse_rule(i, raw, defaults, names)
            if rule.name in seen:
                raise self.fail(f"rule {rule.name!r}", "field 'name': duplicate rule name")
            seen.add(rule.name)
            rules.append(rule)

        links = self.interpolate(data.get("links") or {}, "links")
        if not isinstance(links, Mapping):
            raise self.fail("field 'links'", "must be a mapping")
        for key in links:
            if key != "dashboard":
                raise self.fail(f"links: field {key!r}", _unknown(key, ("dashboard",)))
        dashboard = links.get("dashboard") or ""
        if not isinstance(dashboard, str) or (dashboard and "://" not in dashboard):
            raise self.fail("links: field 'dashboard'", f"must be a URL, got {dashboard!r}")

        retrain = self.interpolate(data.get("retrain") or {}, "retrain")
        if not isinstance(retrain, Mapping):
            raise self.fail("field 'retrain'", "must be a mapping")
        out: dict[str, float] = {}
        for key in retrain:
            if key not in ("window", "pending_ttl"):
                raise self.fail(f"retrain: field {key!r}", _unknown(key, ("window", "pending_ttl")))
            out[key] = self.duration(f"retrain: field {key!r}", retrain[key], positive=True)
        return Rules(
            rules,
            channels=channels,
            dashboard_url=dashboard.rstrip("/"),
            retrain_window_s=out.get("window", 86400.0),
            retrain_pending_ttl_s=out.get("pending_ttl", 6 * 3600.0),
            source=self.source,
        )

    def parse_channels(self, raw: Any) -> list[ChannelSpec]:
        if not isinstance(raw, Mapping):
            raise self.fail("field 'notify'", "must be a mapping of channel name to settings")
        out = []
        for name, spec in raw.items():
            where = f"notify channel {name!r}"
            if not isinstance(name, str) or not _NAME.match(name):
                raise self.fail(where, "channel names are letters, digits, '_', '.', ':', '-'")
            if not isinstance(spec, Mapping):
                raise self.fail(where, f"must be a mapping of fields, got {type(spec).__name__}")
            spec = {k: self.interpolate(v, f"{where}: field {k!r}") for k, v in spec.items()}
            kind = spec.get("type")
            if not isinstance(kind, str) or not kind:
                raise self.fail(where, f"field 'type': must be a channel type, got {kind!r}")
            out.append(ChannelSpec(name, kind, spec))
        return out

    def parse_rule(
        self, i: int, raw: Any, defaults: Mapping[str, Any], channels: set[str]
    ) -> Rule:
        if not isinstance(raw, Mapping):
            raise self.fail(f"rule #{i + 1}", f"must be a mapping of fields, got {raw!r}")
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.fail(
                f"rule #{i + 1}",
                f"field 'name': must be a name of letters, digits, '_', '.', ':', '-', got {name!r}",
            )
        where = f"rule {name!r}"
        for key in raw:
            if key not in _RULE_KEYS:
                raise self.fail(f"{where}: field {key!r}", _unknown(key, _RULE_KEYS))
        r = {**defaults, **{
            k: self.interpolate(v, f"{where}: field {k!r}") for k, v in raw.items()
        }}

        def bad(key: str, expect: str) -> RulesError:
            return self.fail(f"{where}: field {key!r}", f"must be {expect}, got {r.get(key)!r}")

        def globs(key: str, required: bool = False) -> tuple[str, ...]:
            if key not in r:
                if required:
                    raise self.fail(f"{where}: field {key!r}", "required")
                return ("*",)
            v = r[key]
            v = [v] if isinstance(v, str) else v
            if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
                raise bad(key, "a glob or a list of globs")
            if key == "signal":
                if not all(x for x in v):
                    raise bad(key, "a non-empty signal name or glob")
                for pattern in v:
                    problem = unknown_signal(pattern, self.known())
                    if problem is not None:
                        raise self.fail(f"{where}: field 'signal'", problem)
            return tuple(v)

        def integer(key: str, default: int, lo: int) -> int:
            if key not in r:
                return default
            v = r[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise bad(key, f"an integer >= {lo}")
            return v

        def boolean(key: str, default: bool) -> bool:
            v = r.get(key, default)
            if not isinstance(v, bool):
                raise bad(key, "true or false")
            return v

        def text(key: str) -> str:
            v = r.get(key, "")
            if v is None:
                return ""
            if not isinstance(v, str):
                raise bad(key, "text")
            return v

        change = boolean("change", False)
        if change:
            for key in ("op", "threshold"):
                if key in raw:
                    raise self.fail(f"{where}: field {key!r}", "not allowed with change: true")
            op, threshold = ">=", 1.0
        else:
            if "op" not in r or "threshold" not in r:
                missing = "op" if "op" not in r else "threshold"
                raise self.fail(
                    f"{where}: field {missing!r}",
                    "required (a comparison op and threshold, or change: true)",
                )
            op = r["op"]
            if op not in OPS:
                raise bad("op", f"one of {', '.join(repr(o) for o in OPS)}")
            t = r["threshold"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
                raise bad("threshold", "a finite number")
            threshold = float(t)

        severity = r.get("severity", "warning")
        if severity not in SEVERITIES:
            raise bad("severity", f"one of {', '.join(SEVERITIES)}")

        actions = r.get("actions", ["notify"])
        actions = [actions] if isinstance(actions, str) else actions
        if not isinstance(actions, list) or not all(a in ACTIONS for a in actions):
            raise bad("actions", f"a list of {', '.join(ACTIONS)}")

        wanted = r.get("channels", [])
        wanted = [wanted] if isinstance(wanted, str) else wanted
        if not isinstance(wanted, list) or not all(isinstance(c, str) for c in wanted):
            raise bad("channels", "a list of channel names from the notify section")
        for c in wanted:
            if c not in channels:
                known = ", ".join(sorted(channels)) or "none configured"
                raise self.fail(f"{where}: field 'channels'", f"unknown channel {c!r} (known: {known})")

        runbook = text("runbook")
        if runbook and "://" not in runbook:
            raise bad("runbook", "a URL")

        req = r.get("require_detail") or {}
        if not isinstance(req, Mapping) or not all(
            isinstance(k, str) and (v is None or isinstance(v, (str, int, float, bool)))
            for k, v in req.items()
        ):
            raise bad("require_detail", "a mapping of detail keys to plain values")

        resolve_after = None
        if r.get("resolve_after") is not None:
            resolve_after = self.duration(f"{where}: field 'resolve_after'", r["resolve_after"], positive=True)

        rule = Rule(
            name=name,
            signal=globs("signal", required=True),
            app=globs("app"),
            model=globs("model"),
            model_version=globs("model_version"),
            dimension=globs("dimension"),
            op=op,
            threshold=threshold,
            change=change,
            absolute=boolean("abs", False),
            for_=integer("for", 1, 1),
            resolve_for=integer("resolve_for", 1, 1),
            resolve_after=resolve_after,
            min_n=integer("min_n", 0, 0),
            require_significant=boolean("require_significant", True),
            require_detail=tuple(sorted(req.items())),
            severity=severity,
            cooldown=self.duration(f"{where}: field 'cooldown'", r.get("cooldown", 900.0)),
            max_fires_per_hour=integer("max_fires_per_hour", 4, 1),
            runbook=runbook,
            actions=tuple(dict.fromkeys(actions)),
            channels=tuple(wanted),
            summary=text("summary"),
            description=text("description"),
        )
        if rule.summary:
            sample = Signal("x.y", 1.0, n=1)
            try:
                rule.render_summary(sample)
            except (KeyError, IndexError, ValueError) as exc:
                raise self.fail(
                    f"{where}: field 'summary'",
                    f"bad placeholder {exc} (known: {', '.join(SUMMARY_FIELDS)})",
                ) from None
        return rule

    def duration(self, where: str, value: Any, *, positive: bool = False) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise self.fail(
                where, f"must be a duration (seconds, or text like 90s, 15m, 6h, 1d), got {value!r}"
            ) from None
        if positive and seconds <= 0:
            raise self.fail(where, f"must be a duration > 0, got {value!r}")
        return seconds
