"""``llmpulse report`` with nothing to report on: one line saying what is missing and what to run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llmpulse.harness import child_env


def _report(tmp_path: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmpulse.cli", "report",
                           "--out", str(tmp_path / "r.html"), *args],
                          env=child_env(data_dir), cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)


def _one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_no_stack_and_no_store(tmp_path: Path) -> None:
    data = tmp_path / "never-started"
    line = _one_line(_report(tmp_path, data))
    assert line.startswith("llmpulse report: no running stack in ") and str(data) in line
    assert "'llmpulse up'" in line and "--dsn" in line
    assert not data.exists(), "looking must not create an empty store"
    assert not (tmp_path / "r.html").exists()


def test_a_store_without_llmpulse_tables(tmp_path: Path) -> None:
    from llmpulse.store import Store

    data = tmp_path / "data"
    Store.open(f"chdb://{data / 'store'}", ddl=False).close()  # a directory chDB made, no tables
    line = _one_line(_report(tmp_path, data))
    assert "no stored events at chdb://" in line and "'llmpulse up'" in line


def test_an_explicit_dsn_that_does_not_exist(tmp_path: Path) -> None:
    line = _one_line(_report(tmp_path, tmp_path / "data", "--dsn", f"chdb://{tmp_path / 'nope'}"))
    assert f"chdb://{tmp_path / 'nope'}" in line
