"""The browser tests' Chromium requirement: a skip with its reason on a developer's
machine, a failure under CI=true (never a silent skip there)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import ensure_chromium, in_ci


def test_missing_browser_fails_under_ci(tmp_path: Path) -> None:
    missing = tmp_path / "chromium"
    with pytest.raises(pytest.fail.Exception, match=r"CI=true .*chromium is missing"):
        ensure_chromium(missing, install=("false",), env={"CI": "true"})
    with pytest.raises(pytest.fail.Exception, match="still missing"):
        ensure_chromium(missing, install=("true",), env={"CI": "1"})


def test_missing_browser_skips_with_its_reason_outside_ci(tmp_path: Path) -> None:
    missing = tmp_path / "chromium"
    with pytest.raises(pytest.skip.Exception, match="is missing and `false` failed"):
        ensure_chromium(missing, install=("false",), env={"CI": "false"})
    with pytest.raises(pytest.skip.Exception, match="is missing and `no-such-installer"):
        ensure_chromium(missing, install=("no-such-installer-here",), env={})


def test_a_present_browser_is_used_without_installing(tmp_path: Path) -> None:
    binary = tmp_path / "chromium"
    binary.write_text("")
    marker = tmp_path / "installed"
    assert ensure_chromium(binary, install=("touch", str(marker)), env={"CI": "true"}) == \
        str(binary)
    assert not marker.exists()


def test_ci_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert in_ci()
    monkeypatch.delenv("CI")
    assert not in_ci()
