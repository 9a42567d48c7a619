"""The shipped runbooks: what to check and do when an alert of a signal family fires.

An alert links to its rule's own ``runbook:`` URL; a rule without one links
to the runbook of its signal's family here, served by llmpulse at
``/dashboards/runbooks#<anchor>``.

>>> runbook_for("drift.chi_square").anchor, runbook_for("bias.accuracy_gap").anchor
('feature-drift', 'segment-gap')
>>> runbook_for("drift.embedding_mmd", "embedding:prompt").anchor, runbook_for("x.y").anchor
('prompt-drift', 'any-alert')
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from llmpulse.dashboards.panels import DASHBOARDS, panel_for_signal

__all__ = ["RUNBOOKS", "Runbook", "runbook_for", "runbooks_html"]


@dataclass(frozen=True, slots=True)
class Runbook:
    """One family's runbook; ``signals`` are name prefixes (``drift.``) or exact names."""

    anchor: str
    title: str
    signals: tuple[str, ...]
    meaning: str
    checks: tuple[str, ...]
    actions: tuple[str, ...]

    def matches(self, signal: str) -> bool:
        return any(signal == s or (s.endswith(".") and signal.startswith(s))
                   for s in self.signals)


RUNBOOKS: tuple[Runbook, ...] = (
    Runbook(
        "latency", "Latency too high or rising",
        ("latency.",),
        "Answers take longer than the SLO (p95 / p99 over the window), or the change "
        "detector saw latency step up.",
        ("Overview dashboard: is it one model or version, or all? A new version points at "
         "the deployment (alerts dashboard, deployments panel).",
         "Output tokens/s: a drop means the provider is slow; a rise in output tokens means "
         "longer answers (prompt change).",
         "Error rate by model: timeouts show as latency first."),
        ("Provider incident: fail over to another model or region if the app can.",
         "A new prompt or model version: roll back (`llmpulse rollback <model>`).",
         "Load: scale the serving side; check the monitor's own lag on the health dashboard "
         "before trusting late windows."),
    ),
    Runbook(
        "errors", "Errors or timeouts",
        ("errors.",),
        "A larger share of requests ended with status error or timeout.",
        ("Overview: which model, version and app; the alert's `error_type` values in the "
         "raw events (`/api/query` on inference_events).",
         "Dead letters on the health dashboard: invalid events are not counted as errors."),
        ("Provider errors: retry policy, failover, or a rollback of the version that "
         "started them.",
         "Rate limits: lower concurrency or raise the quota."),
    ),
    Runbook(
        "cost-throughput", "Cost or token throughput",
        ("cost.", "tokens."),
        "Spend per window or output token throughput moved out of its range.",
        ("Cost and volume table on the overview: which app and model; requests or tokens "
         "per request?",
         "Traffic by prompt version (quality dashboard): a new prompt may answer longer."),
        ("Cap output tokens, cache, or move traffic to a cheaper model.",),
    ),
    Runbook(
        "prompt-drift", "Prompt topics changed (embedding drift)",
        ("drift.embedding_mmd", "drift.embedding_auc", "drift.mmd"),
        "What users ask moved away from the reference prompts (embedding test significant).",
        ("Embedding drift panel and the raw prompts of the window: a new topic, a new "
         "language, a campaign or abuse?",
         "Quality and hallucination dashboards for the same model: does the new topic hurt "
         "answers?"),
        ("New topics the model should serve: add them to retrieval and the evaluation set; "
         "retrain if the rule asks for it.",
         "Abuse: block at the edge; the alert resolves once the windows recover."),
    ),
    Runbook(
        "feature-drift", "Input feature drift",
        ("drift.",),
        "The distribution of an input feature (dimension) in the window differs from the "
        "reference. The drift dashboard plots each test relative to its threshold; 1.0 is "
        "the detector's drift line.",
        ("Drift dashboard, filtered to the feature: one test or several? PSI and KS together "
         "on the same feature is a real shift, not noise.",
         "Latest drift table: p-value, sample size and, when drift reports are enabled, the "
         "Evidently report of the window.",
         "Did an upstream change (a new client, a new segment, a bug in feature extraction) "
         "start at the same time? Check the deployments panel."),
        ("A pipeline bug: fix the producer; the alert resolves when the windows recover.",
         "A real change in traffic: let the retrain (rules with action retrain) run, then "
         "watch the canary on the alerts dashboard.",
         "An expected change: reset the reference by restarting with the new data, or raise "
         "the rule's threshold."),
    ),
    Runbook(
        "segment-gap", "A segment is treated worse (bias)",
        ("bias.",),
        "One segment (attribute=value) differs from the rest by more than the rule allows, "
        "and the gap is significant after multiple-test correction.",
        ("Fairness dashboard filtered to the segment: confidence interval, sample size, "
         "since when.",
         "Is the segment's traffic new or shifted (drift dashboard, segment.* features)?",
         "Raw events of the segment: language, region or tier-specific failures."),
        ("A retrain with segment reweighting (rules with action retrain); the canary gate "
         "checks every segment with 30 or more samples.",
         "A prompt or retrieval fix for that segment; verify on the fairness dashboard."),
    ),
    Runbook(
        "hallucination", "Ungrounded or flagged answers",
        ("hallucination.",),
        "More answers are not supported by their retrieved context, or users flag more "
        "answers as hallucinated.",
        ("Hallucination dashboard, worst examples: which sentences are unsupported, and "
         "did retrieval return the right passages?",
         "Retrieval changes (index rebuild, embedding model) and prompt versions around "
         "the start."),
        ("Retrieval broken: roll back the index or retriever.",
         "Prompt or model change: roll back the version; add the worst examples to the "
         "evaluation set."),
    ),
    Runbook(
        "quality", "Answer quality dropped",
        ("quality.",),
        "Accuracy against labels, user feedback or overlap with reference answers fell "
        "under the rule's threshold.",
        ("Quality dashboard: worst answers against their references; accuracy and "
         "feedback per model and version.",
         "Feedback arrives late: a window is recomputed when labels come in, so look at "
         "the last few windows together."),
        ("A new version: roll it back. Otherwise let the retrain run and watch the canary.",),
    ),
    Runbook(
        "experiment", "An experiment arm is worse",
        ("ab.",),
        "A treatment arm (prompt version or variant) is significantly worse than its "
        "control on one or more metrics (Holm-corrected).",
        ("A/B verdict table: which metrics, effect size and interval, arms' sample sizes.",),
        ("Stop the arm (route its traffic to the control) and keep the data for review.",),
    ),
    Runbook(
        "agent", "An agent's tools fail or loop",
        ("agent.",),
        "In traced requests (OpenTelemetry spans), a tool fails more often than the rule "
        "allows, requests loop on one tool, or steps, tokens or cost per request rose.",
        ("Agent traces dashboard: which tool or agent (the alert's dimension), its error "
         "rate and step latency; the slowest and looping traces.",
         "Open one trace as a waterfall (`/dashboards/trace/<trace_id>`): which step "
         "failed or repeated, and what the model asked the tool."),
        ("A failing tool: its own service's health and credentials; a timeout that is too "
         "short for it.",
         "Loops: a prompt or tool-description change that confuses the agent; roll it "
         "back, or cap the tool calls per request in the agent."),
    ),
    Runbook(
        "monitor-health", "The monitor itself",
        ("llmpulse.",),
        "llmpulse is behind, losing writes or failing to deliver notifications.",
        ("Health dashboard: consumer lag, events/s, store write errors, notification "
         "failures, dead letters by reason.",
         "`llmpulse status` and `/api/stats` for the counters."),
        ("Lag: more worker processes or partitions; store errors: disk space and the "
         "store's log; notification failures: the channel's credentials and endpoint.",),
    ),
    Runbook(
        "any-alert", "Any other alert",
        (),
        "A rule on a signal with no runbook of its own broke its threshold.",
        ("Open the alert's dashboard link: the panel is filtered to the alert's app, "
         "model, version, signal and dimension over its window.",
         "Alerts dashboard: is it alone, or one of several alerts that started together?"),
        ("Add `runbook: <URL>` to the rule so the next page says what to do.",),
    ),
)


def runbook_for(signal: str, dimension: str = "") -> Runbook:
    """The runbook of a signal (the catch-all ``any-alert`` when no family matches)."""
    if dimension.startswith("embedding:") and signal.startswith("drift."):
        return next(r for r in RUNBOOKS if r.anchor == "prompt-drift")
    for r in RUNBOOKS:
        if r.matches(signal):
            return r
    return RUNBOOKS[-1]


def runbooks_html(base: str = "/dashboards") -> str:
    """Every runbook on one page, an anchor per family (the page the links open)."""
    from llmpulse.dashboards.render import CSS

    sections = []
    for r in RUNBOOKS:
        names = ", ".join(f"<code>{escape(s)}{'*' if s.endswith('.') else ''}</code>"
                          for s in r.signals) or "signals no other runbook covers"
        panel = ""
        if r.signals:
            first = r.signals[0] + "x" if r.signals[0].endswith(".") else r.signals[0]
            board, pid = panel_for_signal(
                first, "embedding:prompt" if r.anchor == "prompt-drift" else "")
            d = DASHBOARDS[board]
            panel = (f'<p>Dashboard: <a href="{escape(base)}/{d.name}#panel-{pid}">'
                     f"{escape(d.title)}</a></p>")
        checks = "".join(f"<li>{escape(c)}</li>" for c in r.checks)
        actions = "".join(f"<li>{escape(a)}</li>" for a in r.actions)
        sections.append(
            f'<section class="runbook" id="{escape(r.anchor)}"><h2>{escape(r.title)}</h2>'
            f"<p>Signals: {names}</p><p>{escape(r.meaning)}</p>{panel}"
            f"<h3>Check</h3><ol>{checks}</ol><h3>Act</h3><ol>{actions}</ol></section>")
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Runbooks · llmpulse</title><style>{CSS} section.runbook{{padding:4px 16px;"
            "border-bottom:1px solid var(--grid)}} section.runbook:target{{background:var(--panel)}}"
            " a{{color:#8ab8ff}} code{{color:#ca95e5}}</style></head><body>"
            "<header><h1>llmpulse runbooks</h1></header>"
            f"{''.join(sections)}</body></html>")
