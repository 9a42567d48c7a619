"""The panels of every llmpulse dashboard: one source of truth.

Each :class:`Panel` holds the SQL that Grafana's ClickHouse data source runs
(with its macros ``$__timeFilter(col)``, ``$__timeInterval(col)``,
``$__interval_s``, ``$__fromTime``/``$__toTime`` and
``$__conditionalAll(cond, $var)`` over the template variables ``app``,
``model``, ``version`` and, on panels that read ``signals`` or ``alerts``,
``signal`` and ``dimension``: what an alert's link sets, so the linked panel
shows only the series that broke; ``prompt_version`` and ``experiment`` on
the panels over the raw events, see :data:`PROMPT_VARIABLES`). The same text generates the Grafana JSON
(:mod:`llmpulse.dashboards.grafana`) and, expanded by :mod:`llmpulse.dashboards.macros`, feeds
the embedded live page (:mod:`llmpulse.dashboards.web`) and ``llmpulse report``.

Result shapes, declared in ``Panel.columns`` and checked by the tests:

* ``timeseries``: ``time`` first, then string label columns (one line per
  label), then numeric value columns;
* ``table``: exactly the declared columns;
* ``stat``: one row with a numeric ``value``;
* ``barchart``: a string category column, then a numeric value column.

>>> d = DASHBOARDS["overview"]
>>> d.uid, d.title, len(d.panels) > 5
('llmpulse-overview', 'LLM apps: overview', True)
>>> d.panel(6).title, d.panel(6).columns
('Latency percentiles (ms)', ('time', 'series', 'value'))
>>> panel_for_signal("drift.psi")
('drift', 1)
>>> panel_for_signal("drift.ks", "embedding:prompt")
('drift', 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "DASHBOARDS",
    "DRIFT_RELATIVE_CAP",
    "DRIFT_THRESHOLDS",
    "HEALTH_SIGNALS",
    "PANEL_KINDS",
    "PROMPT_VARIABLES",
    "TRACE_VIEW",
    "Dashboard",
    "Panel",
    "Variable",
    "panel_for_signal",
]

PANEL_KINDS = ("timeseries", "table", "stat", "barchart")

#: Signals the llmpulse worker emits about itself (``app``/``model`` empty).
HEALTH_SIGNALS: dict[str, str] = {
    "llmpulse.lag": "messages behind the end of each raw topic (dimension = topic)",
    "llmpulse.events_per_s": "events consumed per second (dimension = topic)",
    "llmpulse.store_errors": "failed store writes in the window (dimension = table)",
    "llmpulse.notify_failures": "notifications that failed after retries (dimension = channel)",
    "llmpulse.judge_graded": "answers the LLM judge graded per report interval",
    "llmpulse.judge_failures": "answers sampled for the LLM judge but not graded, per reason "
                               "(timeout, error, malformed, rate_limited, over_budget, queue_full)",
    "llmpulse.judge_latency_s": "mean seconds per LLM judge call",
    "llmpulse.judge_spend_usd": "what the LLM judge spent over the last hour (USD)",
}


@dataclass(frozen=True, slots=True)
class Variable:
    """A dashboard template variable: its values come from ``sql`` (column ``value``)."""

    name: str
    label: str
    sql: str


@dataclass(frozen=True, slots=True)
class Panel:
    """One chart or table: title, SQL with Grafana macros, kind, unit, result columns."""

    id: int
    title: str
    sql: str
    kind: str
    columns: tuple[str, ...]
    unit: str = ""
    description: str = ""
    width: int = 12
    height: int = 8
    links: tuple[tuple[str, str], ...] = ()
    """(column, url template) pairs: a Grafana data link on that table column."""
    threshold_line: float | None = None
    """A value drawn as a red line across a time series (the alert line)."""

    def __post_init__(self) -> None:
        if self.kind not in PANEL_KINDS:
            raise ValueError(f"panel {self.title!r}: kind must be one of {PANEL_KINDS}")
        if self.kind == "timeseries" and self.columns[:1] != ("time",):
            raise ValueError(f"panel {self.title!r}: a time series starts with column 'time'")
        if self.kind == "stat" and self.columns != ("value",):
            raise ValueError(f"panel {self.title!r}: a stat has the one column 'value'")
        if not 1 <= self.width <= 24:
            raise ValueError(f"panel {self.title!r}: width is 1..24 grid columns")


@dataclass(frozen=True, slots=True)
class Dashboard:
    """A named set of panels; ``name`` is the short key used in URLs."""

    name: str
    uid: str
    title: str
    panels: tuple[Panel, ...]
    description: str = ""
    variables: tuple[Variable, ...] = ()
    tags: tuple[str, ...] = field(default=("llmpulse",))

    def __post_init__(self) -> None:
        ids = [p.id for p in self.panels]
        if len(ids) != len(set(ids)):
            raise ValueError(f"dashboard {self.name}: panel ids repeat: {ids}")

    def panel(self, key: int | str) -> Panel:
        """The panel with this id or title."""
        for p in self.panels:
            if p.id == key or p.title == key:
                return p
        raise KeyError(f"dashboard {self.name} has no panel {key!r}")


# -- building blocks ----------------------------------------------------------

VARIABLES = (
    Variable("app", "App", "SELECT DISTINCT app AS value FROM inference_events ORDER BY value"),
    Variable("model", "Model", "SELECT DISTINCT model AS value FROM inference_events ORDER BY value"),
    Variable(
        "version",
        "Version",
        "SELECT DISTINCT model_version AS value FROM inference_events ORDER BY value",
    ),
    Variable(
        "signal",
        "Signal",
        "SELECT DISTINCT signal AS value FROM signals WHERE signal NOT LIKE 'llmpulse.%' "
        "ORDER BY value",
    ),
    Variable(
        "dimension",
        "Dimension",
        "SELECT DISTINCT dimension AS value FROM signals WHERE dimension != '' "
        "AND signal NOT LIKE 'llmpulse.%' ORDER BY value",
    ),
)
"""Template variables of the app dashboards. ``signal`` and ``dimension``
filter only the panels over ``signals`` and ``alerts`` (raw events have
neither)."""

PROMPT_VARIABLES = (
    Variable(
        "prompt_version",
        "Prompt version",
        "SELECT DISTINCT prompt_version AS value FROM inference_events "
        "WHERE prompt_version != '' ORDER BY value",
    ),
    Variable(
        "experiment",
        "Experiment",
        "SELECT DISTINCT experiment AS value FROM inference_events "
        "WHERE experiment != '' ORDER BY value",
    ),
)
"""The prompt variables of the dashboards with panels over the raw events:
``prompt_version`` and ``experiment`` filter every panel that reads
``inference_events`` (and the worst-answer tables through the event of each
example); ``experiment`` also filters the A/B panels (dimension
``experiment=<name>``). Signals carry no prompt version, so the other signal
panels ignore them."""

_AB_EXPERIMENT = "splitByString(',variant=', replaceOne(dimension, 'experiment=', ''))[1]"
"""The experiment of an ``ab.*`` signal (dimension ``experiment=<name>[,variant=<arm>]``)."""


def _vars(app: str | None = "app", model: str | None = "model",
          version: str | None = "model_version", signal: str | None = None,
          dimension: str | None = None, prompt_version: str | None = None,
          experiment: str | None = None) -> str:
    parts = []
    for var, col in (("app", app), ("model", model), ("version", version),
                     ("signal", signal), ("dimension", dimension),
                     ("prompt_version", prompt_version), ("experiment", experiment)):
        if col:
            parts.append(f"$__conditionalAll({col} IN (${{{var}:singlequote}}), ${var})")
    return " AND ".join(parts)


_SIG = _vars(signal="signal", dimension="dimension")
"""The variables of a panel over ``signals`` or ``alerts``."""

#: The shipped threshold and what it applies to, per window drift test: used
#: where a stored signal's detail has no ``threshold`` (a test checks these
#: against the detectors' own defaults).
DRIFT_THRESHOLDS: dict[str, tuple[float, str]] = {
    "drift.psi": (0.15, "value"),
    "drift.jensen_shannon": (0.12, "value"),
    "drift.wasserstein": (0.2, "value"),
    "drift.ks": (0.001, "p_value"),
    "drift.chi_square": (0.001, "p_value"),
}


DRIFT_RELATIVE_CAP = 10.0
"""Relative drift is drawn at most this high: a p-value that underflows to 0
(a chi-square statistic in the thousands) would otherwise put one line at 100."""


def _relative_drift_sql() -> str:
    """A drift signal relative to its threshold: 1.0 is the drift line, above is drift.

    A test on the value (PSI, Jensen-Shannon, Wasserstein) plots
    ``value / threshold``; a test on the p-value (KS, chi-square) plots
    ``log10(p) / log10(threshold)``, which is 1.0 at ``p = threshold`` and
    grows as p falls, so a chi-square statistic in the thousands does not
    flatten the other lines. Both are capped at :data:`DRIFT_RELATIVE_CAP`.
    """
    def pick(kind: int) -> str:
        cases = ", ".join(f"signal = '{name}', {spec[kind]!r}"
                          for name, spec in DRIFT_THRESHOLDS.items())
        return f"multiIf({cases}, {'NULL' if kind == 0 else repr('')})"

    thr = (f"if(JSONExtractFloat(detail, 'threshold') > 0, "
           f"JSONExtractFloat(detail, 'threshold'), {pick(0)})")
    on = (f"if(JSONExtractString(detail, 'threshold_on') != '', "
          f"JSONExtractString(detail, 'threshold_on'), {pick(1)})")
    p_rel = (f"log10(greatest(JSONExtractFloat(detail, 'p_value'), 1e-300)) / "
             f"log10(nullIf(least({thr}, 0.999999), 0))")
    return (f"least(if({on} = 'p_value', if(JSONHas(detail, 'p_value'), {p_rel}, NULL), "
            f"value / nullIf({thr}, 0)), {DRIFT_RELATIVE_CAP!r})")


def _signal_series(title: str, pid: int, where: str, series: str, agg: str = "max",
                   unit: str = "", width: int = 12, description: str = "",
                   value: str = "value", threshold_line: float | None = None) -> Panel:
    sql = (
        f"SELECT $__timeInterval(ts) AS time, {series} AS series, {agg}({value}) AS value\n"
        "FROM signals FINAL\n"
        f"WHERE $__timeFilter(ts) AND {where} AND {_SIG}\n"
        "GROUP BY time, series\nORDER BY time, series"
    )
    return Panel(pid, title, sql, "timeseries", ("time", "series", "value"), unit=unit,
                 width=width, description=description, threshold_line=threshold_line)


def _health_series(title: str, pid: int, signal: str, agg: str, unit: str) -> Panel:
    sql = (
        f"SELECT $__timeInterval(ts) AS time, if(dimension = '', 'all', dimension) AS series, "
        f"{agg}(value) AS value\n"
        "FROM signals FINAL\n"
        f"WHERE $__timeFilter(ts) AND signal = '{signal}'\n"
        "GROUP BY time, series\nORDER BY time, series"
    )
    return Panel(pid, title, sql, "timeseries", ("time", "series", "value"), unit=unit,
                 description=HEALTH_SIGNALS[signal])


_PROMPT = _vars(app=None, model=None, version=None, prompt_version="prompt_version",
               experiment="experiment")
"""The prompt variables alone (on the columns joined from an example's event)."""


def _worst_examples(signal: str, score: str, columns: tuple[str, ...]) -> str:
    """The ``worst`` examples in the detail of ``signal``, with their event's prompt columns.

    ``columns`` are ``name:key:JSONType`` read from each example, the score
    first; each example's event (same ``event_id``) brings its
    ``prompt_version``, ``experiment`` and ``variant``, which the prompt
    variables filter.
    """
    fields = ", ".join(f"JSONExtract{kind}(w, '{key}') AS {name}"
                       for name, key, kind in (c.split(":") for c in columns))
    names = ", ".join(c.split(":")[0] for c in columns)
    return (
        "SELECT ts, model, model_version, prompt_version, experiment, variant, event_id, "
        f"{names}\n"
        "FROM (SELECT ts, model, model_version, JSONExtractString(w, 'event_id') AS event_id, "
        f"{fields}\n"
        "  FROM (SELECT ts, model, model_version, "
        "arrayJoin(JSONExtractArrayRaw(detail, 'worst')) AS w\n"
        "    FROM signals FINAL\n"
        f"    WHERE $__timeFilter(ts) AND signal = '{signal}' AND {_SIG})) AS s\n"
        "LEFT JOIN (SELECT event_id, any(prompt_version) AS prompt_version, "
        "any(experiment) AS experiment, any(variant) AS variant\n"
        "  FROM inference_events\n"
        "  WHERE ts BETWEEN $__fromTime - INTERVAL 1 HOUR AND $__toTime\n"
        "  GROUP BY event_id) AS e USING (event_id)\n"
        f"WHERE {_PROMPT}\n"
        f"ORDER BY {score} ASC, ts DESC\nLIMIT 20"
    )


_RAW = ("FROM inference_events FINAL\nWHERE $__timeFilter(ts) AND "
        f"{_vars(prompt_version='prompt_version', experiment='experiment')}")
"""The rows of a panel over the raw events: every variable but signal and dimension."""

# -- the dashboards -------------------------------------------------------------

OVERVIEW = Dashboard(
    "overview",
    "llmpulse-overview",
    "LLM apps: overview",
    description="Traffic, latency, errors, tokens and cost per app, model and version.",
    variables=VARIABLES + PROMPT_VARIABLES,
    panels=(
        Panel(1, "Requests", f"SELECT count() AS value\n{_RAW}", "stat", ("value",),
              unit="short", width=6, height=4),
        Panel(2, "Error rate",
              f"SELECT if(count() = 0, 0, countIf(status != 'ok') / count()) AS value\n{_RAW}",
              "stat", ("value",), unit="percentunit", width=6, height=4),
        Panel(3, "Latency p95 (ms)", f"SELECT quantile(0.95)(latency_ms) AS value\n{_RAW}",
              "stat", ("value",), unit="ms", width=6, height=4),
        Panel(4, "Cost (USD)", f"SELECT sum(ifNull(cost_usd, 0)) AS value\n{_RAW}", "stat",
              ("value",), unit="currencyUSD", width=6, height=4),
        Panel(5, "Traffic (requests/s)",
              f"SELECT $__timeInterval(ts) AS time, model AS series, "
              f"count() / $__interval_s AS value\n{_RAW}\nGROUP BY time, series\n"
              "ORDER BY time, series",
              "timeseries", ("time", "series", "value"), unit="reqps",
              description="Raw inference events per second, by model."),
        _signal_series("Latency percentiles (ms)", 6,
                       "signal IN ('latency.p50_ms', 'latency.p95_ms', 'latency.p99_ms')",
                       "concat(model, ' ', replaceOne(signal, 'latency.', ''))", unit="ms",
                       description="Signals latency.p50_ms, p95_ms and p99_ms per model."),
        Panel(7, "Error rate by model",
              "SELECT $__timeInterval(ts) AS time, model AS series, "
              f"countIf(status != 'ok') / count() AS value\n{_RAW}\nGROUP BY time, series\n"
              "ORDER BY time, series",
              "timeseries", ("time", "series", "value"), unit="percentunit",
              description="Share of requests with status error or timeout (raw events)."),
        _signal_series("Output tokens/s", 8, "signal = 'tokens.output_per_s'", "model",
                       agg="avg", unit="short"),
        _signal_series("Cost by app (USD per window)", 9, "signal = 'cost.usd'",
                       "concat(app, ' ', model)", agg="sum", unit="currencyUSD"),
        Panel(10, "Cost and volume by app, model and version",
              "SELECT app, model, model_version, count() AS requests, "
              "sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, "
              "round(sum(ifNull(cost_usd, 0)), 4) AS cost_usd, "
              "round(quantile(0.95)(latency_ms), 1) AS p95_ms, "
              "round(countIf(status != 'ok') / count(), 4) AS error_rate\n"
              f"{_RAW}\nGROUP BY app, model, model_version\nORDER BY cost_usd DESC",
              "table", ("app", "model", "model_version", "requests", "input_tokens",
                        "output_tokens", "cost_usd", "p95_ms", "error_rate"),
              width=24, height=7),
        _signal_series("Quality: accuracy and feedback score", 11,
                       "signal IN ('quality.accuracy', 'quality.feedback_score')",
                       "concat(model, ' ', replaceOne(signal, 'quality.', ''))", agg="avg",
                       width=24,
                       description="Accuracy against labels and mean user feedback score."),
    ),
)

DRIFT = Dashboard(
    "drift",
    "llmpulse-drift",
    "LLM apps: drift",
    description="Data drift per feature and test, and embedding drift of prompts.",
    variables=VARIABLES,
    panels=(
        _signal_series("Feature drift by test (1 = drift threshold)", 1,
                       "signal LIKE 'drift.%' AND dimension NOT LIKE 'embedding:%'",
                       "concat(dimension, ' ', replaceOne(signal, 'drift.', ''))",
                       value=_relative_drift_sql(), threshold_line=1.0,
                       description="drift.<test> signals, one line per feature and test, each "
                                   "relative to its threshold so PSI, KS, Wasserstein and "
                                   "chi-square share one axis: value / threshold for PSI, "
                                   "Jensen-Shannon and Wasserstein, log10(p) / "
                                   "log10(threshold) for the p-value tests (KS, chi-square), "
                                   "drawn at most at 10. Above the red line at 1.0 the "
                                   "detector flags drift; the table below has raw values."),
        _signal_series("Embedding drift", 2,
                       "signal LIKE 'drift.%' AND dimension LIKE 'embedding:%'",
                       "concat(dimension, ' ', replaceOne(signal, 'drift.', ''))",
                       description="Drift of sentence embeddings (dimension embedding:<field>)."),
        Panel(3, "Latest drift per feature and test",
              "SELECT signal, dimension, round(argMax(value, ts), 4) AS value, "
              "argMax(n, ts) AS n, "
              "round(argMax(JSONExtractFloat(detail, 'p_value'), ts), 6) AS p_value, "
              "argMax(JSONExtractBool(detail, 'drift'), ts) AS drift, "
              "argMax(JSONExtractString(detail, 'report'), ts) AS report, "
              "max(ts) AS last_ts\n"
              "FROM signals FINAL\n"
              f"WHERE $__timeFilter(ts) AND signal LIKE 'drift.%' AND {_SIG}\n"
              "GROUP BY signal, dimension\nORDER BY drift DESC, value DESC\nLIMIT 50",
              "table", ("signal", "dimension", "value", "n", "p_value", "drift", "report",
                        "last_ts"),
              width=24, height=9,
              description="The Evidently report column links to the HTML report of the window.",
              links=(("report", "${__value.raw}"),)),
    ),
)

FAIRNESS = Dashboard(
    "fairness",
    "llmpulse-fairness",
    "LLM apps: fairness",
    description="Gaps between segments (attribute=value) and the rest, with confidence intervals.",
    variables=VARIABLES,
    panels=(
        _signal_series("Gap per attribute and segment", 1, "signal LIKE 'bias.%'",
                       "concat(replaceOne(signal, 'bias.', ''), ' ', dimension)", agg="avg"),
        Panel(2, "Segments with a significant gap",
              "SELECT $__timeInterval(ts) AS time, replaceOne(signal, 'bias.', '') AS series, "
              "sum(JSONExtractBool(detail, 'significant')) AS value\n"
              "FROM signals FINAL\n"
              f"WHERE $__timeFilter(ts) AND signal LIKE 'bias.%' AND {_SIG}\n"
              "GROUP BY time, series\nORDER BY time, series",
              "timeseries", ("time", "series", "value"), unit="short",
              description="Segments whose gap is significant after multiple-test correction."),
        Panel(3, "Latest gaps with confidence intervals",
              "SELECT signal, dimension, round(argMax(value, ts), 4) AS gap, "
              "argMax(n, ts) AS n, "
              "round(argMax(JSONExtractFloat(detail, 'ci_low'), ts), 4) AS ci_low, "
              "round(argMax(JSONExtractFloat(detail, 'ci_high'), ts), 4) AS ci_high, "
              "round(argMax(JSONExtractFloat(detail, 'p_value'), ts), 6) AS p_value, "
              "argMax(JSONExtractBool(detail, 'significant'), ts) AS significant\n"
              "FROM signals FINAL\n"
              f"WHERE $__timeFilter(ts) AND signal LIKE 'bias.%' AND {_SIG}\n"
              "GROUP BY signal, dimension\nORDER BY significant DESC, abs(gap) DESC\nLIMIT 50",
              "table", ("signal", "dimension", "gap", "n", "ci_low", "ci_high", "p_value",
                        "significant"),
              width=24, height=9),
    ),
)

HALLUCINATION = Dashboard(
    "hallucination",
    "llmpulse-hallucination",
    "LLM apps: hallucination",
    description="Groundedness of answers in their retrieved context, user flags, worst answers.",
    variables=VARIABLES + PROMPT_VARIABLES,
    panels=(
        _signal_series("Groundedness and ungrounded share", 1,
                       "signal IN ('hallucination.groundedness_mean', "
                       "'hallucination.ungrounded_share')",
                       "concat(model, ' ', replaceOne(signal, 'hallucination.', ''))",
                       agg="avg", unit="percentunit"),
        Panel(2, "Groundedness distribution (windows)",
              "SELECT toString(round(floor(value * 10) / 10, 1)) AS bucket, count() AS windows\n"
              "FROM signals FINAL\n"
              "WHERE $__timeFilter(ts) AND signal = 'hallucination.groundedness_mean' "
              f"AND {_SIG}\n"
              "GROUP BY bucket\nORDER BY bucket",
              "barchart", ("bucket", "windows"), unit="short",
              description="How many windows had a mean groundedness in each 0.1 bucket."),
        _signal_series("Flagged rate (user feedback)", 3,
                       "signal IN ('hallucination.flagged_rate', "
                       "'hallucination.low_logprob_share')",
                       "concat(model, ' ', replaceOne(signal, 'hallucination.', ''))",
                       agg="avg", unit="percentunit"),
        Panel(4, "Worst examples",
              _worst_examples("hallucination.ungrounded_share", "score",
                              ("score:score:Float", "sentence:sentence:String")),
              "table", ("ts", "model", "model_version", "prompt_version", "experiment",
                        "variant", "event_id", "score", "sentence"),
              width=24, height=9,
              description="The least grounded sentences, with the prompt version, "
                          "experiment and variant of their request."),
    ),
)

_AB_VARS = _vars(app=None, model=None, version=None, experiment=_AB_EXPERIMENT)
_AB = f"{_SIG} AND {_AB_VARS}"
"""The variables of an A/B panel: those of a signal panel and ``experiment``."""

_AB_LATEST = (
    "SELECT app, model, model_version, dimension, replaceOne(signal, 'ab.', '') AS metric,\n"
    "  JSONExtractString(d, 'control') AS control, JSONExtractString(d, 'treatment') AS treatment,\n"
    "  JSONExtractInt(d, 'n_control') AS n_control, JSONExtractInt(d, 'n_treatment') AS n_treatment,\n"
    "  round(JSONExtractFloat(d, 'control_value'), 4) AS control_value,\n"
    "  round(JSONExtractFloat(d, 'treatment_value'), 4) AS treatment_value,\n"
    "  round(v, 4) AS effect, round(JSONExtractFloat(d, 'ci_low'), 4) AS ci_low,\n"
    "  round(JSONExtractFloat(d, 'ci_high'), 4) AS ci_high,\n"
    "  round(JSONExtractFloat(d, 'p_holm'), 6) AS p_holm, JSONExtractString(d, 'verdict') AS verdict\n"
    "FROM (SELECT app, model, model_version, signal, dimension, argMax(value, ts) AS v,\n"
    "        argMax(detail, ts) AS d\n"
    "      FROM signals FINAL\n"
    "      WHERE $__timeFilter(ts) AND signal LIKE 'ab.%' AND signal != 'ab.verdict' "
    "AND {where}\n"
    "      GROUP BY app, model, model_version, signal, dimension)\n"
    "ORDER BY verdict = 'worse' DESC, p_holm ASC\nLIMIT 100"
)

QUALITY = Dashboard(
    "quality",
    "llmpulse-quality",
    "LLM apps: answer quality and experiments",
    description="Answers against reference answers, and A/B comparisons of prompt versions.",
    variables=VARIABLES + PROMPT_VARIABLES,
    panels=(
        _signal_series("Reference overlap (ROUGE-L, BLEU, chrF, semantic)", 1,
                       "signal IN ('quality.rouge_l', 'quality.bleu', 'quality.chrf', "
                       "'quality.semantic_similarity')",
                       "concat(model, ' ', replaceOne(signal, 'quality.', ''))", agg="avg",
                       unit="percentunit",
                       description="Mean overlap of answers with the reference answers "
                                   "(corrections, golden sets) that feedback brought, 0..1."),
        Panel(2, "Worst answers against their reference",
              _worst_examples("quality.rouge_l", "rouge_l",
                              ("rouge_l:score:Float", "response:response:String",
                               "reference:reference:String")),
              "table", ("ts", "model", "model_version", "prompt_version", "experiment",
                        "variant", "event_id", "rouge_l", "response", "reference"),
              width=24, height=8,
              description="The answers furthest from their reference, with the prompt "
                          "version, experiment and variant of their request."),
        Panel(3, "A/B verdict with confidence intervals", _AB_LATEST.format(where=_AB),
              "table", ("app", "model", "model_version", "dimension", "metric", "control",
                        "treatment", "n_control", "n_treatment", "control_value",
                        "treatment_value", "effect", "ci_low", "ci_high", "p_holm", "verdict"),
              width=24, height=9,
              description="Latest window per experiment and metric: effect = treatment - "
                          "control with its confidence interval; p-values Holm-corrected "
                          "across the metrics of a pair of arms."),
        _signal_series("Metrics significantly worse per experiment", 4,
                       f"signal = 'ab.verdict' AND {_AB_VARS}", "dimension", agg="max", unit="short",
                       description="ab.verdict: how many metrics of the treatment arm are "
                                   "significantly worse than the control (Holm)."),
        Panel(5, "Traffic by prompt version and variant",
              "SELECT app, model, prompt_version, experiment, variant, count() AS requests, "
              "round(quantile(0.95)(latency_ms), 1) AS p95_ms, "
              "round(countIf(status != 'ok') / count(), 4) AS error_rate, "
              "round(avg(ifNull(cost_usd, 0)), 6) AS cost_per_request\n"
              f"{_RAW}\nGROUP BY app, model, prompt_version, experiment, variant\n"
              "ORDER BY app, model, prompt_version, experiment, variant",
              "table", ("app", "model", "prompt_version", "experiment", "variant", "requests",
                        "p95_ms", "error_rate", "cost_per_request"),
              width=24, height=7),
    ),
)

ALERTS = Dashboard(
    "alerts",
    "llmpulse-alerts",
    "LLM apps: alerts and deployments",
    description="Alert timeline, open alerts, deployments and rollbacks, the audit trail.",
    variables=VARIABLES,
    panels=(
        Panel(1, "Alerts started",
              "SELECT $__timeInterval(started_at) AS time, severity AS series, count() AS value\n"
              "FROM alerts FINAL\n"
              f"WHERE $__timeFilter(started_at) AND {_SIG}\n"
              "GROUP BY time, series\nORDER BY time, series",
              "timeseries", ("time", "series", "value"), unit="short"),
        Panel(2, "Deployments by stage",
              "SELECT $__timeInterval(ts) AS time, stage AS series, count() AS value\n"
              "FROM deployments FINAL\n"
              f"WHERE $__timeFilter(ts) AND {_vars(app=None, version='version')}\n"
              "GROUP BY time, series\nORDER BY time, series",
              "timeseries", ("time", "series", "value"), unit="short",
              description="canary, promoted and rolled_back stages over time."),
        Panel(3, "Open alerts",
              "SELECT started_at, severity, rule, app, model, model_version, signal, dimension, "
              "round(value, 4) AS value, threshold, summary\n"
              "FROM alerts FINAL\n"
              f"WHERE state = 'firing' AND started_at <= $__toTime AND {_SIG}\n"
              "ORDER BY started_at DESC\nLIMIT 50",
              "table", ("started_at", "severity", "rule", "app", "model", "model_version",
                        "signal", "dimension", "value", "threshold", "summary"),
              width=24, height=7),
        Panel(4, "Alert history",
              "SELECT started_at, resolved_at, state, severity, rule, model, signal, dimension, "
              "round(value, 4) AS value, summary\n"
              "FROM alerts FINAL\n"
              f"WHERE $__timeFilter(started_at) AND {_SIG}\n"
              "ORDER BY started_at DESC\nLIMIT 100",
              "table", ("started_at", "resolved_at", "state", "severity", "rule", "model",
                        "signal", "dimension", "value", "summary"),
              width=24, height=8),
        Panel(5, "Deployments",
              "SELECT ts, model, version, previous_version, stage, trigger, metrics\n"
              "FROM deployments FINAL\n"
              f"WHERE $__timeFilter(ts) AND {_vars(app=None, version='version')}\n"
              "ORDER BY ts DESC\nLIMIT 100",
              "table", ("ts", "model", "version", "previous_version", "stage", "trigger",
                        "metrics"),
              width=24, height=7),
        Panel(6, "Audit trail",
              "SELECT ts, action, actor, outcome, target, remote, detail\n"
              "FROM audit_events\n"
              "WHERE $__timeFilter(ts)\n"
              "ORDER BY ts DESC\nLIMIT 100",
              "table", ("ts", "action", "actor", "outcome", "target", "remote", "detail"),
              description="Who did what on the admin surface: erase, deploy, rollback, "
                          "retrain, rule reload, admin token use, failed authentication.",
              width=24, height=7),
    ),
)

HEALTH = Dashboard(
    "health",
    "llmpulse-health",
    "llmpulse health",
    description="The monitoring pipeline itself: lag, throughput, dead letters, notifications, "
                "the LLM judge.",
    panels=(
        _health_series("Consumer lag (messages)", 1, "llmpulse.lag", "max", "short"),
        _health_series("Events/s", 2, "llmpulse.events_per_s", "avg", "short"),
        Panel(3, "Dead letters",
              "SELECT $__timeInterval(ts) AS time, topic AS series, count() AS value\n"
              "FROM deadletter_events FINAL\n"
              "WHERE $__timeFilter(ts)\n"
              "GROUP BY time, series\nORDER BY time, series",
              "timeseries", ("time", "series", "value"), unit="short",
              description="Events rejected by validation or by the store, per topic."),
        _health_series("Notification failures", 4, "llmpulse.notify_failures", "sum", "short"),
        _health_series("Store write errors", 5, "llmpulse.store_errors", "sum", "short"),
        Panel(6, "Dead letters by reason",
              "SELECT topic, substring(reason, 1, 120) AS reason, count() AS events, "
              "max(ts) AS last_ts\n"
              "FROM deadletter_events FINAL\n"
              "WHERE $__timeFilter(ts)\n"
              "GROUP BY topic, reason\nORDER BY events DESC\nLIMIT 50",
              "table", ("topic", "reason", "events", "last_ts"), width=12),
        _health_series("LLM judge: answers not graded, by reason", 7,
                       "llmpulse.judge_failures", "sum", "short"),
        _health_series("LLM judge: answers graded", 8, "llmpulse.judge_graded", "sum", "short"),
        _health_series("LLM judge: seconds per call", 9, "llmpulse.judge_latency_s", "avg", "s"),
        _health_series("LLM judge: spend over the last hour (USD)", 10,
                       "llmpulse.judge_spend_usd", "max", "currencyUSD"),
    ),
)

# -- agent traces (OTel spans): the agent.* signals and the spans table ---------------

TRACE_VIEW = "/dashboards/trace/"
"""Path of the embedded trace view (a waterfall of one request's steps) + trace id."""


def _agent_series(title: str, pid: int, signal: str, agg: str, unit: str,
                  description: str, *, named_only: bool = False) -> Panel:
    named = " AND dimension != ''" if named_only else ""
    sql = (
        "SELECT $__timeInterval(ts) AS time, "
        "concat(app, ' ', if(dimension = '', 'all', dimension)) AS series, "
        f"{agg}(value) AS value\n"
        "FROM signals FINAL\n"
        f"WHERE $__timeFilter(ts) AND signal = '{signal}'{named} AND {_vars(model=None, version=None)}\n"
        "GROUP BY time, series\nORDER BY time, series"
    )
    return Panel(pid, title, sql, "timeseries", ("time", "series", "value"), unit=unit,
                 description=description)


AGENTS = Dashboard(
    "agents",
    "llmpulse-agents",
    "LLM apps: agent traces",
    description="Steps of traced requests (OpenTelemetry spans): step latency, tool errors, "
                "steps, loops, tokens and cost per trace; the slowest and looping traces.",
    variables=VARIABLES[:1],
    panels=(
        _agent_series("Step latency p95 (ms)", 1, "agent.step_p95_ms", "max", "ms",
                      "Per step kind (step=llm|tool|retrieval|agent), tool and agent."),
        _agent_series("Tool error rate", 2, "agent.tool_error_rate", "avg", "percentunit",
                      "Share of a tool's calls whose span failed.", named_only=True),
        _agent_series("Steps per trace", 3, "agent.steps_per_trace", "avg", "short",
                      "LLM calls, tool calls and retrievals per request, all and per agent."),
        _agent_series("Loop rate", 4, "agent.loop_rate", "avg", "percentunit",
                      "Share of requests that called one tool 5 or more times."),
        _agent_series("Tokens per trace", 5, "agent.tokens_per_trace", "avg", "short",
                      "Input + output tokens of a request's model calls."),
        _agent_series("Cost per trace (USD)", 6, "agent.cost_per_trace_usd", "avg",
                      "currencyUSD", "Where the spans carry a cost (gen_ai.usage.cost)."),
        Panel(7, "Looping traces",
              "SELECT ts, app, JSONExtractString(l, 'trace_id') AS trace_id, "
              "JSONExtractString(l, 'tool') AS tool, JSONExtractInt(l, 'calls') AS calls\n"
              "FROM (SELECT ts, app, arrayJoin(JSONExtractArrayRaw(detail, 'loops')) AS l\n"
              "  FROM signals FINAL\n"
              "  WHERE $__timeFilter(ts) AND signal = 'agent.loop_rate' AND dimension = '' "
              f"AND {_vars(model=None, version=None)})\n"
              "ORDER BY calls DESC, ts DESC\nLIMIT 50",
              "table", ("ts", "app", "trace_id", "tool", "calls"), width=12, height=9,
              description="Requests in which one tool was called 5 or more times.",
              links=(("trace_id", TRACE_VIEW + "${__value.raw}"),)),
        Panel(8, "Slowest traces",
              "SELECT trace_id, any(app) AS app, min(ts) AS start, "
              "round(dateDiff('microsecond', min(ts), max(end_ts)) / 1000, 1) AS duration_ms, "
              "countIf(step IN ('llm', 'tool', 'retrieval')) AS steps, "
              "countIf(status != 'ok') AS failed, "
              "sum(input_tokens + output_tokens) AS tokens\n"
              "FROM spans FINAL\n"
              f"WHERE $__timeFilter(ts) AND {_vars(model=None, version=None)}\n"
              "GROUP BY trace_id\nORDER BY duration_ms DESC\nLIMIT 50",
              "table", ("trace_id", "app", "start", "duration_ms", "steps", "failed", "tokens"),
              width=12, height=9,
              description="Open one in the trace view: a waterfall of its steps.",
              links=(("trace_id", TRACE_VIEW + "${__value.raw}"),)),
    ),
)

DASHBOARDS: dict[str, Dashboard] = {
    d.name: d for d in (OVERVIEW, DRIFT, FAIRNESS, HALLUCINATION, QUALITY, ALERTS, HEALTH)
}
DASHBOARDS[AGENTS.name] = AGENTS


_AGENT_PANELS = {"step": 1, "tool_error_rate": 2, "steps_per_trace": 3, "loop_rate": 4,
                 "tool_calls_max": 4, "tokens_per_trace": 5, "cost_per_trace_usd": 6}


def panel_for_signal(signal: str, dimension: str = "") -> tuple[str, int]:
    """The (dashboard name, panel id) that shows a signal: where an alert links to."""
    if signal.startswith("latency."):
        return "overview", 6
    if signal.startswith("errors."):
        return "overview", 7
    if signal.startswith("tokens."):
        return "overview", 8
    if signal.startswith("cost."):
        return "overview", 9
    if signal in ("quality.rouge_l", "quality.bleu", "quality.chrf",
                  "quality.semantic_similarity"):
        return "quality", 1
    if signal == "ab.verdict":
        return "quality", 4
    if signal.startswith("ab."):
        return "quality", 3
    if signal.startswith("quality."):
        return "overview", 11
    if signal.startswith("drift."):
        return "drift", 2 if dimension.startswith("embedding:") else 1
    if signal.startswith("bias."):
        return "fairness", 1
    if signal in ("hallucination.flagged_rate", "hallucination.low_logprob_share"):
        return "hallucination", 3
    if signal.startswith("hallucination."):
        return "hallucination", 1
    if signal.startswith("agent."):
        measure = signal[len("agent."):]
        return "agents", _AGENT_PANELS.get("step" if measure.startswith("step_p") else measure, 1)
    if signal.startswith("llmpulse."):
        ids = {"llmpulse.lag": 1, "llmpulse.events_per_s": 2,
               "llmpulse.notify_failures": 4, "llmpulse.store_errors": 5,
               "llmpulse.judge_failures": 7, "llmpulse.judge_graded": 8,
               "llmpulse.judge_latency_s": 9, "llmpulse.judge_spend_usd": 10}
        return "health", ids.get(signal, 1)
    return "alerts", 1
