"""The cluster benchmark's argument checks and tables (no broker: the runs themselves
are the benchmark)."""

from __future__ import annotations

from typing import Any

import pytest

from llmpulse.bench.cluster import FAULT_CELLS, fault_rows, format_table, main, scaling_rows
from llmpulse.bench.fault import PARTITIONS


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], f"--workers: 0 is not between 1 and {PARTITIONS}"),
    (["--workers", "1", str(PARTITIONS + 1)], f"is not between 1 and {PARTITIONS} (the topics have"),
    (["--faults", "worker"], "--faults: 'worker' is not one of broker, scale, rolling, pause"),
    (["--rate", "-5"], "--rate: -5 is not a positive number"),
    (["--seconds", "0"], "--seconds: 0 is not a positive number"),
])
def test_bad_arguments_are_refused_naming_the_option(argv: list[str], message: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _case(workers: int, per_s: float, us: float) -> dict[str, Any]:
    return {"workers": workers, "offered_per_s": 3000.0, "sustained_per_s": per_s,
            "worker_cpu_us_per_event": us, "all_cpu_us_per_event": 2 * us, "late_dropped": 0,
            "freshness": {"5s": {"p50_ms": 1500.0, "p99_ms": 4200.0}}}


def test_the_table_shows_each_worker_count_and_every_nonzero_fault_cell() -> None:
    cells = dict.fromkeys(FAULT_CELLS, 0)
    result: dict[str, Any] = {
        "machine": {"cpus": 2}, "partitions": 4,
        "windows": {"latency_window_s": 5.0, "window_s": 10.0},
        "scaling": scaling_rows([_case(3, 900.0, 330.0), _case(1, 1000.0, 300.0)]),
        "kept_logs": {"pause": "/tmp/run/fault-pause"},
        "fault_table": fault_rows({"pause": {**cells, "windows": 800, "events": 6000,
                                             "late_dropped": 12, "windows_differing": 4,
                                             "restart_s": 40.04, "traffic_during_fault_s": 12.5},
                                   "scale": {"error": "TimeoutError: no first page"}}),
    }
    assert [r["workers"] for r in result["scaling"]] == [1, 3]
    assert result["scaling"][1]["cpu_per_event_vs_1"] == 1.1
    assert result["scaling"][1]["throughput_vs_1"] == 0.9
    assert result["fault_table"][0]["not_zero"] == ["windows_differing"]
    assert result["fault_table"][1]["not_zero"] == ["error"]
    text = format_table(result)
    assert "5s:1.5/4.2" in text and "scale     failed: TimeoutError" in text
    pause = next(line for line in text.splitlines() if line.lstrip().startswith("pause"))
    assert pause.split()[1:4] == ["6000", "800", "0"] and pause.split()[-3] == "12"
    assert pause.endswith("40.0 (12.5)")  # the fault took 40 s, the traffic flowed 12.5 s of it
    assert "pause: not 0, its logs are kept under /tmp/run/fault-pause" in text
