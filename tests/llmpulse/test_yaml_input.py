"""Settings and rules files that are small and hostile: an alias bomb, an alias that
contains itself, nesting deeper than the parser's recursion. Each is refused at load
with an error naming the file and the reason, in a child process with a deadline (the
bomb hung the loader, its memory growing); anchors and aliases within bounds still work.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmpulse.config import ConfigError, load_settings
from llmpulse.streams.rules import Rules, RulesError
from llmpulse.yaml_input import MAX_DEPTH, MAX_VALUES, YamlInputError, load_yaml


def _bomb(levels: int, width: int = 9) -> str:
    """A flow list of ``levels`` anchors, each ``width`` aliases of the one before:
    ``width ** levels`` values once expanded, a few hundred bytes as written."""
    names = [f"l{i}" for i in range(levels)]
    parts = [f"&{names[0]} [{', '.join(['lol'] * width)}]"]
    parts += [f"&{c} [{', '.join(['*' + p] * width)}]" for p, c in zip(names, names[1:], strict=False)]
    return "[" + ", ".join(parts) + "]"


def _rules(field: str, value: str) -> str:
    rule = {"name": "x", "signal": "latency.p99_ms", "op": '">"', "threshold": "1"}
    rule[field] = value
    return "rules:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in rule.items()) + "\n"


HOSTILE = {
    "bomb-in-description": _rules("description", _bomb(9)),
    "bomb-as-signal": _rules("signal", _bomb(9)),
    "bomb-as-threshold": _rules("threshold", _bomb(9)),
    "self-containing": _rules("description", "&a [1, *a]"),
    "flow-nesting": "rules: " + "[" * 50_000 + "]" * 50_000 + "\n",
    "block-nesting": "rules:\n" + "".join("  " * i + "- \n" for i in range(1, 3000)),
}
WHY = {"bomb-in-description": "expand to more than", "bomb-as-signal": "expand to more than",
       "bomb-as-threshold": "expand to more than", "self-containing": "contains it",
       "flow-nesting": "levels deep", "block-nesting": "levels deep"}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_rules_or_settings_file_is_refused_at_once_and_named(
        tmp_path: Path, name: str) -> None:
    rules, settings = tmp_path / "rules.yaml", tmp_path / "llmpulse.yaml"
    rules.write_text(HOSTILE[name])
    settings.write_text(HOSTILE[name].replace("rules:", "signals:", 1))
    code = textwrap.dedent(f"""
        from llmpulse.config import ConfigError, load_settings
        from llmpulse.streams.rules import Rules, RulesError
        try:
            Rules.load({str(rules)!r})
        except RulesError as exc:
            print(exc)
        try:
            load_settings(env={{}}, path={str(settings)!r})
        except ConfigError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    assert len(out) == 2, out
    assert out[0].startswith(f"{rules}: ") and WHY[name] in out[0], out
    assert out[1].startswith(f"{settings}: ") and WHY[name] in out[1], out


def test_anchors_and_aliases_within_bounds_load_as_written(tmp_path: Path) -> None:
    """A rules file that repeats a block through an anchor and a merge key, and a small
    bomb (3**6 values): the same rules as written out, and the values all there."""
    shared = textwrap.dedent("""
        defaults: &d {for: 2, resolve_for: 2, cooldown: 5m}
        rules:
          - &p99 {name: p99, signal: latency.p99_ms, op: ">", threshold: 4000, severity: critical}
          - {<<: *p99, name: p99-canary, threshold: 3000}
    """)
    spelled = textwrap.dedent("""
        defaults: {for: 2, resolve_for: 2, cooldown: 5m}
        rules:
          - {name: p99, signal: latency.p99_ms, op: ">", threshold: 4000, severity: critical}
          - {name: p99-canary, signal: latency.p99_ms, op: ">", threshold: 3000, severity: critical}
    """)
    a, b = Rules.from_yaml(shared), Rules.from_yaml(spelled)
    assert [r.name for r in a.rules] == ["p99", "p99-canary"]
    assert a.rules == b.rules
    small = load_yaml(f"x: {_bomb(6, 3)}")
    flat: list[str] = []

    def walk(v: object) -> None:
        if isinstance(v, list):
            for x in v:
                walk(x)
        else:
            flat.append(str(v))
    walk(small["x"][-1])
    assert len(flat) == 3 ** 6 and set(flat) == {"lol"}


def test_the_bounds_are_where_they_say() -> None:
    ok = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert load_yaml(ok) is not None
    with pytest.raises(YamlInputError, match="levels deep"):
        load_yaml("[" + ok + "]")
    # MAX_VALUES counts every value, the list itself and its items
    assert load_yaml("[" + ", ".join(["1"] * (MAX_VALUES - 1)) + "]") is not None
    with pytest.raises(YamlInputError, match="expand to more than"):
        load_yaml("[" + ", ".join(["1"] * MAX_VALUES) + "]")


def test_bad_yaml_still_says_where(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match=r"r\.yaml: not valid YAML \(line 3, column 1\)"):
        Rules.from_yaml("rules:\n  - {name: x\n", source="r.yaml")
    (tmp_path / "llmpulse.yaml").write_text("signals: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(env={}, path=tmp_path / "llmpulse.yaml")
