"""The judge: section of llmpulse.yaml: loaded, checked with errors naming the key, the token
from the environment or a file and never printed; command-line flags over it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from llmpulse.cli import main
from llmpulse.config import ConfigError, load_settings
from llmpulse.judge import configure, settings_from_args
from llmpulse.judge_config import JudgeSettings

TOKEN = "sk-judge-4f9a1c77e2"

GOOD = """\
judge:
  endpoint: https://llm.internal:8443/v1
  model: grader-large
  token_env: JUDGE_API_TOKEN
  sample_rate: 0.1
  app_rates:
    checkout: 0.5
  cost_cap_usd_per_hour: 2
  price_per_1k_tokens: 0.004
  concurrency: 8
  timeout_s: 12.5
"""


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    path = tmp_path / "llmpulse.yaml"
    path.write_text(text)
    return load_settings(env=env or {}, path=path)


def test_judge_section_is_loaded(tmp_path: Path) -> None:
    j = _load(tmp_path, GOOD, {"JUDGE_API_TOKEN": TOKEN}).judge
    assert (j.endpoint, j.model, j.sample_rate, dict(j.app_rates)) == (
        "https://llm.internal:8443/v1", "grader-large", 0.1, {"checkout": 0.5})
    assert (j.cost_cap_usd_per_hour, j.price_per_1k_tokens, j.concurrency, j.timeout_s) == (
        2.0, 0.004, 8, 12.5)
    assert j.token is not None and j.token.get() == TOKEN
    assert j.rate_for("checkout") == 0.5 and j.rate_for("support") == 0.1


def test_no_judge_section_gives_the_defaults(tmp_path: Path) -> None:
    j = _load(tmp_path, "signals:\n  window_s: 30\n").judge
    assert j == JudgeSettings() and j.endpoint is None and j.token is None


def test_token_from_a_file_and_the_default_variable(tmp_path: Path) -> None:
    secret = tmp_path / "judge-token"
    secret.write_text(TOKEN + "\n")
    j = _load(tmp_path, f"judge:\n  token_file: {secret}\n").judge
    assert j.token is not None and j.token.get() == TOKEN
    j = _load(tmp_path, "judge:\n  model: m\n", {"LLMPULSE_JUDGE_TOKEN": TOKEN}).judge
    assert j.token is not None and j.token.get() == TOKEN


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("judge: 3\n", "judge: must be a mapping"),
        ("judge:\n  colour: red\n", "judge.colour: unknown setting"),
        (f"judge:\n  token: {TOKEN}\n", "judge.token: do not write the token into the config file"),
        ("judge:\n  endpoint: ftp://llm/v1\n", "judge.endpoint: must be an http"),
        ("judge:\n  endpoint: https://me:pw@llm/v1\n", "judge.endpoint: credentials do not go"),
        ("judge:\n  endpoint: http://llm:99999/v1\n", "judge.endpoint: not a URL"),
        ("judge:\n  model: ''\n", "judge.model: must be a non-empty string"),
        ("judge:\n  sample_rate: 1.5\n", "judge.sample_rate: must be within 0..1"),
        ("judge:\n  app_rates: {checkout: -0.1}\n", "judge.app_rates.checkout: must be within 0..1"),
        ("judge:\n  app_rates: {checkout: often}\n", "judge.app_rates.checkout: must be a number"),
        ("judge:\n  app_rates: [checkout]\n", "judge.app_rates: must be a mapping"),
        ("judge:\n  cost_cap_usd_per_hour: -1\n", "judge.cost_cap_usd_per_hour: must be >= 0"),
        ("judge:\n  cost_cap_usd_per_hour: .nan\n", "judge.cost_cap_usd_per_hour: must be a number"),
        ("judge:\n  concurrency: 0\n", "judge.concurrency: must be >= 1"),
        ("judge:\n  concurrency: 2.5\n", "judge.concurrency: must be a whole number"),
        ("judge:\n  timeout_s: 0\n", "judge.timeout_s: must be > 0"),
        ("judge:\n  timeout_s: true\n", "judge.timeout_s: must be a number"),
        ("judge:\n  token_file: /nonexistent/judge-token\n", "judge.token_file: cannot read"),
        ("judge:\n  token_env: A\n  token_file: /x\n", "judge.token_file: set judge.token_env or"),
    ],
)
def test_bad_judge_settings_name_the_key(tmp_path: Path, yaml: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.").replace("(", r"\(")):
        _load(tmp_path, yaml)


def test_the_token_is_never_printed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s = _load(tmp_path, GOOD, {"JUDGE_API_TOKEN": TOKEN})
    logging.getLogger("llmpulse").info("settings %s %r", s, s.judge)
    assert TOKEN not in repr(s) and TOKEN not in str(s.judge) and TOKEN not in caplog.text
    assert "***" in repr(s.judge)


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    configure(p)
    return p.parse_args(list(argv))


def test_flags_override_the_file(tmp_path: Path) -> None:
    base = _load(tmp_path, GOOD, {"JUDGE_API_TOKEN": TOKEN}).judge
    s = settings_from_args(base, _args("--model", "other", "--app-rate", "support=1",
                                       "--concurrency", "2"), {})
    assert (s.model, s.endpoint, s.concurrency, s.timeout_s) == (
        "other", "https://llm.internal:8443/v1", 2, 12.5)
    assert dict(s.app_rates) == {"checkout": 0.5, "support": 1.0}
    assert s.token is not None and s.token.get() == TOKEN
    s = settings_from_args(base, _args("--api-key-env", "OTHER_TOKEN"), {"OTHER_TOKEN": "sk-2"})
    assert s.token is not None and s.token.get() == "sk-2"


def test_judge_command_refuses_bad_settings_naming_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_API_TOKEN", TOKEN)
    cfg = tmp_path / "llmpulse.yaml"
    cfg.write_text(GOOD.replace("concurrency: 8", "concurrency: 0"))
    assert main(["--config", str(cfg), "judge"]) == 2
    err = capsys.readouterr().err
    assert "judge.concurrency: must be >= 1" in err and TOKEN not in err
    cfg.write_text("judge:\n  model: m\n")
    assert main(["--config", str(cfg), "judge"]) == 2
    assert "judge.endpoint: not set" in capsys.readouterr().err
    assert main(["--config", str(cfg), "judge", "--endpoint", "http://h/v1", "--sample", "2"]) == 2
    assert "judge.sample_rate: must be within 0..1" in capsys.readouterr().err


def test_the_example_in_the_docs_loads(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "quality.md").read_text()
    block = doc.split("```yaml\njudge:", 1)[1].split("```", 1)[0]
    j = _load(tmp_path, "judge:" + block, {"JUDGE_API_TOKEN": TOKEN}).judge
    assert j.endpoint == "https://judge.internal/v1" and j.token is not None
    assert dict(j.app_rates) == {"checkout": 0.2} and j.health_every_s == 30.0
