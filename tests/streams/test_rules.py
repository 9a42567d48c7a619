"""Rules files: validation errors that name the rule and field, matching, verdicts."""

from __future__ import annotations

import pytest

from llmpulse.detectors.base import Signal
from llmpulse.streams.notify import build_channels
from llmpulse.streams.rules import Rule, Rules, RulesError, Verdict, parse_duration

CONTRACT_SIGNALS = [
    "latency.p99_ms", "latency.p95_ms", "latency.change", "errors.rate", "errors.timeout_rate",
    "drift.psi", "drift.embedding_mmd", "bias.accuracy_gap", "bias.feedback_score_gap",
    "bias.demographic_parity_difference", "bias.equalized_odds_difference",
    "bias.error_rate_gap", "bias.hallucination_rate_gap", "hallucination.ungrounded_share",
    "hallucination.flagged_rate", "quality.accuracy", "quality.feedback_score",
]

BASE = """
rules:
  - name: p99-latency
    signal: latency.p99_ms
    op: ">"
    threshold: 4000
"""


def one(extra: str) -> str:
    return BASE + "".join(f"    {line}\n" for line in extra.strip().splitlines())


@pytest.mark.parametrize(
    "text, message",
    [
        (one("for: two"), "rule 'p99-latency': field 'for': must be an integer >= 1, got 'two'"),
        (one("for: 0"), "rule 'p99-latency': field 'for': must be an integer >= 1, got 0"),
        (one("resolve_for: 1.5"), "rule 'p99-latency': field 'resolve_for': must be an integer >= 1, got 1.5"),
        (one("min_n: -1"), "rule 'p99-latency': field 'min_n': must be an integer >= 0, got -1"),
        (one("severity: page"), "rule 'p99-latency': field 'severity': must be one of info, warning, critical, got 'page'"),
        (one("cooldown: soon"), "rule 'p99-latency': field 'cooldown': must be a duration (seconds, or text like 90s, 15m, 6h, 1d), got 'soon'"),
        (one("actions: [page]"), "rule 'p99-latency': field 'actions': must be a list of notify, retrain, got ['page']"),
        (one("runbook: docs/p99.md"), "rule 'p99-latency': field 'runbook': must be a URL, got 'docs/p99.md'"),
        (one("treshold: 5"), "rule 'p99-latency': field 'treshold': unknown field (did you mean 'threshold'?)"),
        (one("channels: [pager]"), "rule 'p99-latency': field 'channels': unknown channel 'pager' (known: none configured)"),
        (one("change: true"), "rule 'p99-latency': field 'op': not allowed with change: true"),
        (one("require_significant: yes please"), "rule 'p99-latency': field 'require_significant': must be true or false, got 'yes please'"),
        (one("summary: '{value} on {host}'"), "rule 'p99-latency': field 'summary': bad placeholder 'host' (known: rule, signal, value, threshold, op, app, model, model_version, dimension, severity, n, window_s)"),
        (BASE.replace('op: ">"', 'op: "=="'), "rule 'p99-latency': field 'op': must be one of '>', '>=', '<', '<=', got '=='"),
        (BASE.replace("threshold: 4000", "threshold: high"), "rule 'p99-latency': field 'threshold': must be a finite number, got 'high'"),
        (BASE.replace("    threshold: 4000\n", ""), "rule 'p99-latency': field 'threshold': required (a comparison op and threshold, or change: true)"),
        (BASE.replace("    signal: latency.p99_ms\n", ""), "rule 'p99-latency': field 'signal': required"),
        (BASE + BASE.replace("rules:\n", ""), "rule 'p99-latency': field 'name': duplicate rule name"),
        ("rules:\n  - signal: x.y\n    op: '>'\n    threshold: 1\n", "rule #1: field 'name': must be a name of letters, digits, '_', '.', ':', '-', got None"),
        ("rules: {a: 1}", "field 'rules': must be a list of rules"),
        ("rulez: []", "top-level key 'rulez': unknown field (did you mean 'rules'?)"),
        ("version: 2", "field 'version': only version 1 is known, got 2"),
        ("defaults: {fore: 2}", "defaults: field 'fore': unknown field (did you mean 'for'?)"),
        ("retrain: {window: forever}", "retrain: field 'window': must be a duration (seconds, or text like 90s, 15m, 6h, 1d), got 'forever'"),
        ("links: {dashboard: grafana}", "links: field 'dashboard': must be a URL, got 'grafana'"),
        ("notify:\n  pd: [pagerduty]\n", "notify channel 'pd': must be a mapping of fields, got list"),
        ("notify:\n  pd: {routing_key: k}\n", "notify channel 'pd': field 'type': must be a channel type, got None"),
        (BASE.replace("latency.p99_ms", "latency.p99ms"), "rule 'p99-latency': field 'signal': unknown signal 'latency.p99ms' (did you mean 'latency.p99_ms'?)"),
        (BASE.replace("latency.p99_ms", "[errors.rate, drfit.*]"), "rule 'p99-latency': field 'signal': no known signal matches 'drfit.*' (did you mean 'drift.*'?)"),
        ("rules: [", "not valid YAML (line 1, column 9): expected the node content, but found '<stream end>'"),
    ],
)
def test_validation_errors_name_the_file_rule_and_field(text: str, message: str) -> None:
    with pytest.raises(RulesError) as err:
        Rules.from_yaml(text, source="rules.yaml")
    assert str(err.value) == f"rules.yaml: {message}"


def test_load_names_the_path(tmp_path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(one("for: two"))
    with pytest.raises(RulesError, match=r"^.*/rules.yaml: rule 'p99-latency': field 'for'"):
        Rules.load(path)
    with pytest.raises(RulesError, match="cannot read rules file"):
        Rules.load(tmp_path / "missing.yaml")


def test_defaults_apply_unless_a_rule_overrides() -> None:
    rules = Rules.from_yaml("""
defaults: {for: 3, cooldown: 10m, severity: critical}
rules:
  - {name: a, signal: errors.rate, op: ">", threshold: 0.1}
  - {name: b, signal: errors.rate, op: ">", threshold: 0.2, for: 1, cooldown: 30}
""")
    assert (rules["a"].for_, rules["a"].cooldown, rules["a"].severity) == (3, 600.0, "critical")
    assert (rules["b"].for_, rules["b"].cooldown) == (1, 30.0)


def test_env_interpolation_with_defaults_and_escapes() -> None:
    text = """
links: {dashboard: "${DASH:-http://localhost:3000}/d/x"}
notify:
  team: {type: slack, url: "${SLACK_URL}"}
rules:
  - {name: a, signal: errors.rate, op: ">", threshold: 0.1, description: "cost $${HIGH}"}
"""
    rules = Rules.from_yaml(text, env={"SLACK_URL": "https://hooks.example/T/B/abcdefgh"})
    assert rules.dashboard_url == "http://localhost:3000/d/x"
    assert build_channels(rules)[0].url.get() == "https://hooks.example/T/B/abcdefgh"  # type: ignore[attr-defined]
    assert rules["a"].description == "cost ${HIGH}"
    with pytest.raises(RulesError) as err:
        Rules.from_yaml(text, source="r.yaml", env={})
    assert str(err.value) == "r.yaml: notify channel 'team': field 'url': environment variable SLACK_URL is not set"
    with pytest.raises(RulesError, match=r"r.yaml: rule 'a': field 'runbook': environment variable RB is not set"):
        Rules.from_yaml(one("runbook: ${RB}").replace("p99-latency", "a"), source="r.yaml", env={})


def test_default_rules_load_and_cover_the_contract_signals() -> None:
    rules = Rules.default(env={})
    assert len(rules) >= 15
    for name in CONTRACT_SIGNALS:
        dim = "language=de" if name.startswith("bias.") else ""
        assert rules.matching(Signal(name, 0.0, n=10_000, dimension=dim)), name
    for rule in rules:
        if rule.signal[0].startswith("bias."):
            assert rule.require_significant and rule.dimension == ("*=*",)
        assert rule.for_ >= 1 and rule.cooldown >= 900
    assert rules.retrain_window_s == 86400.0 and rules.dashboard_url == ""
    retrain = {r.name for r in rules if "retrain" in r.actions}
    assert {"feature-drift", "accuracy-low"} <= retrain


def test_glob_matching_on_signal_app_model_and_dimension() -> None:
    rules = Rules.from_yaml("""
rules:
  - {name: drift, signal: "drift.*", op: ">", threshold: 0.2, app: "support-*", model: [gpt-*, llama-*]}
  - {name: seg, signal: bias.accuracy_gap, dimension: "*=*", op: "<", threshold: -0.1}
""")
    def names(**kw):
        base = {"signal": "drift.psi", "value": 0.5, "n": 100, "app": "support-eu", "model": "gpt-4o"}
        return [r.name for r in rules.matching(Signal(**{**base, **kw}))]

    assert names() == ["drift"]
    assert names(signal="drift.ks", model="llama-3") == ["drift"]
    assert names(app="sales") == []
    assert names(model="intent-router") == []
    assert names(signal="latency.p99_ms") == []
    assert names(signal="bias.accuracy_gap", dimension="language") == []
    assert names(signal="bias.accuracy_gap", dimension="language=de") == ["seg"]


def test_verdicts_min_n_significance_detail_and_abs() -> None:
    r = Rule(name="r", signal=("bias.*",), op=">=", threshold=0.1, min_n=30)
    assert r.evaluate(Signal("bias.x", 0.2, n=29)) is Verdict.IGNORED
    assert r.evaluate(Signal("bias.x", float("nan"), n=100)) is Verdict.IGNORED
    assert r.evaluate(Signal("bias.x", 0.2, n=30)) is Verdict.BREACH
    assert r.evaluate(Signal("bias.x", 0.2, n=30, detail={"significant": False})) is Verdict.HEALTHY
    assert r.evaluate(Signal("bias.x", 0.2, n=30, detail={"significant": True})) is Verdict.BREACH
    assert r.evaluate(Signal("bias.x", 0.2, n=30, detail={"small_sample": True})) is Verdict.HEALTHY
    lax = Rule(name="r", signal=("bias.*",), op=">=", threshold=0.1, require_significant=False)
    assert lax.evaluate(Signal("bias.x", 0.2, n=30, detail={"significant": False})) is Verdict.BREACH
    d = Rule(name="d", signal=("drift.*",), op=">", threshold=0.0, require_detail=(("drift", True),))
    assert d.evaluate(Signal("drift.embedding_mmd", 0.01, n=50, detail={"drift": True})) is Verdict.BREACH
    assert d.evaluate(Signal("drift.embedding_mmd", 0.01, n=50, detail={"drift": False})) is Verdict.HEALTHY
    assert d.evaluate(Signal("drift.embedding_mmd", 0.01, n=50)) is Verdict.HEALTHY
    a = Rule(name="a", signal=("bias.*",), op=">=", threshold=0.1, absolute=True)
    assert a.evaluate(Signal("bias.x", -0.2, n=30)) is Verdict.BREACH
    assert a.evaluate(Signal("bias.x", -0.05, n=30)) is Verdict.HEALTHY
    ops = {op: Rule(name=op, signal=("x",), op=op, threshold=1.0) for op in (">", ">=", "<", "<=")}
    at = Signal("x", 1.0, n=1)
    assert {op: r.evaluate(at).value for op, r in ops.items()} == {
        ">": "healthy", ">=": "breach", "<": "healthy", "<=": "breach"}


def test_change_rules_breach_on_every_detection() -> None:
    rules = Rules.from_yaml("rules:\n  - {name: c, signal: latency.change, change: true}\n")
    rule = rules["c"]
    assert (rule.op, rule.threshold, rule.effective_resolve_after) == (">=", 1.0, 900.0)
    assert rule.evaluate(Signal("latency.change", 1.0, n=400)) is Verdict.BREACH
    s = Signal("latency.change", 1.0, n=400, app="a", model="m", model_version="1")
    assert rule.render_summary(s) == "latency.change: change detected on a/m@1"


def test_custom_summary_template() -> None:
    rules = Rules.from_yaml(one("summary: '{app}: p99 {value:.0f} ms over {threshold:.0f} ms (n={n})'"))
    s = Signal("latency.p99_ms", 5234.4, n=812, app="support")
    assert rules["p99-latency"].render_summary(s) == "support: p99 5234 ms over 4000 ms (n=812)"


def test_durations() -> None:
    assert [parse_duration(x) for x in (0, 45, "90s", "15m", "6h", "1d", "250ms")] == [
        0.0, 45.0, 90.0, 900.0, 21600.0, 86400.0, 0.25]
    for bad in ("soon", -1, True, "5 weeks", float("inf")):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_exported_names_exist() -> None:
    import llmpulse.streams.alerting
    import llmpulse.streams.notify
    import llmpulse.streams.retrain_trigger
    import llmpulse.streams.rules

    for mod in (llmpulse.streams.rules, llmpulse.streams.alerting, llmpulse.streams.notify, llmpulse.streams.retrain_trigger):
        for name in mod.__all__:
            assert hasattr(mod, name), (mod.__name__, name)


def test_a_bad_notify_channel_is_refused_at_start_naming_the_file(tmp_path) -> None:
    from llmpulse.streams.alerts_agent import load_rules

    path = tmp_path / "rules.yaml"
    path.write_text("notify:\n  pd: {type: pagerduty}\n")
    with pytest.raises(RulesError) as err:
        load_rules(path)
    assert str(err.value) == f"{path}: notify channel 'pd': field 'routing_key': required for a pagerduty channel"


def test_the_rule_model_loads_without_network_or_notify_code() -> None:
    # the pure model sits below the channels: importing it pulls in no HTTP or SMTP client
    import subprocess
    import sys

    code = (
        "import sys, llmpulse.streams.rules, llmpulse.streams.alerting; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'smtplib') "
        "or m.startswith('llmpulse.streams.notify')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_shipped_rules_file_uses_known_signals() -> None:
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    files = sorted(root.glob("llmpulse/rules/*.yaml")) + sorted(root.glob("tests/**/*.yaml"))
    files = [p for p in files if isinstance(d := yaml.safe_load(p.read_text()), dict) and "rules" in d]
    assert root / "llmpulse" / "rules" / "default.yaml" in files
    for path in files:
        assert len(Rules.load(path, env={})) >= 1, path


def test_the_default_rules_load_in_a_fresh_process() -> None:
    # the known signal names come from every detector family, including the ones that
    # are a single module (detectors/agent.py), not only from what a test imported before
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", "from llmpulse.streams.rules import Rules; "
         "print(len(Rules.default().rules))"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout) >= 19
