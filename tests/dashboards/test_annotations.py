"""Deployment records to Grafana annotations, against the local Grafana API of test_publisher."""

from __future__ import annotations

import json
import logging

import pytest

from llmpulse.broker import free_port
from llmpulse.dashboards.annotations import DeploymentAnnotator, GrafanaTarget
from tests.dashboards.test_publisher import TOKEN, FakeGrafana, grafana  # noqa: F401  (fixture)

ROW = {"deployment_id": "d-1", "model": "intent-router", "version": "3", "previous_version": "2",
       "trigger": "alert-9", "stage": "rolled_back", "metrics": "{}", "ts": 1_700_000_100.25}


def _annotator(url: str, token: str = TOKEN) -> DeploymentAnnotator:
    target = GrafanaTarget.from_env({"LLMPULSE_GRAFANA_URL": url, "LLMPULSE_GRAFANA_TOKEN": token})
    assert target is not None
    return DeploymentAnnotator.for_target(target)


def test_a_record_is_annotated_once(grafana: tuple[FakeGrafana, str]) -> None:  # noqa: F811
    fake, url = grafana
    ann = _annotator(url)
    assert ann.annotate(json.dumps(ROW).encode()) == "created"
    assert ann.annotate(json.dumps(ROW).encode()) == "unchanged"
    assert fake.errors == []
    [a] = fake.annotations
    assert a["time"] == 1_700_000_100_250
    assert a["tags"] == ["llmpulse", "deployment", "rolled_back", "model:intent-router",
                         "llmpulse-id:deployment:d-1:rolled_back"]
    assert a["text"] == "intent-router rolled_back 3 (was 2), trigger alert-9"
    assert ann.stats()["created"] == 1 and ann.stats()["unchanged"] == 1


@pytest.mark.parametrize("value", [
    b"", b"\xff\xfe", b"null", b"[1, 2]", b'"promoted"',
    json.dumps({k: v for k, v in ROW.items() if k != "deployment_id"}).encode(),
    json.dumps({**ROW, "ts": None}).encode(),
    json.dumps({**ROW, "ts": True}).encode(),
    json.dumps({**ROW, "ts": "yesterday"}).encode(),
    json.dumps({**ROW, "ts": {"ms": 1}}).encode(),
    json.dumps({**ROW, "stage": ["promoted"]}).encode(),
    json.dumps({**ROW, "model": 7}).encode(),
])
def test_what_is_not_a_deployment_is_skipped_and_posts_nothing(
        grafana: tuple[FakeGrafana, str], value: bytes) -> None:  # noqa: F811
    fake, url = grafana
    ann = _annotator(url)
    assert ann.annotate(value) == "invalid"
    assert fake.annotations == [] and fake.errors == []
    assert ann.annotate(json.dumps(ROW).encode()) == "created"  # and the next one goes through


def test_grafana_down_or_refusing_is_counted_and_the_token_never_logged(
        grafana: tuple[FakeGrafana, str], caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    _fake, url = grafana
    secret = "glsa_never_in_a_log_line_42"
    caplog.set_level(logging.WARNING, logger="llmpulse.dashboards.annotations")
    refused = _annotator(url, token=secret)
    assert refused.annotate(json.dumps(ROW).encode()) == "failed"  # 401 from the server
    down = _annotator(f"http://127.0.0.1:{free_port()}", token=secret)
    assert down.annotate(json.dumps(ROW).encode()) == "failed"
    assert len(caplog.records) == 2
    assert secret not in caplog.text
