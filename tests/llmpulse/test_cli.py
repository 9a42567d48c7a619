"""The command line contract: every command exists and answers --help."""

from __future__ import annotations

import pytest

from llmpulse.cli import BENCHES, build_parser, main

COMMANDS = ("up", "demo", "simulate", "report", "retrain", "deploy", "rollback",
            "dashboards", "bench", "status", "token", "erase", "eval", "judge", "dev")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: llmpulse {command}")
    assert "unavailable here" not in out


def test_no_other_commands() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)


@pytest.mark.parametrize("name", BENCHES)
def test_each_benchmark_is_a_module_with_run_and_table(name: str) -> None:
    import importlib

    mod = importlib.import_module(f"llmpulse.bench.{name}")
    assert callable(mod.run) and callable(mod.format_table)


def test_bad_configuration_names_the_key(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMPULSE_KAFKA", "nohost")
    assert main(["status"]) == 2
    assert "LLMPULSE_KAFKA" in capsys.readouterr().err
