"""The clean stop's drain is bounded by what the broker held when the stop began.

A worker stopped while producers send about as fast as it stores saw a backlog that
never reached zero, and waited minutes (tests/integration/test_stop_under_traffic.py
timed out at 180 s). :class:`StopBacklog` drains the ends read at the stop, and what
the worker forwarded from them, and no more.
"""

from __future__ import annotations

import asyncio

import pytest

from llmpulse.drain import DrainPolicy, Ends, Lag, StopBacklog, drain


class SteadyTraffic:
    """A partition pair under steady traffic: producers add ``rate`` raw events per
    reading, the worker processes ``capacity`` per reading and forwards each raw event
    it processes to ``grouped``, whose reader is one reading behind."""

    def __init__(self, backlog: int, rate: int, capacity: int) -> None:
        self.raw_end = backlog
        self.raw_pos = 0
        self.grouped_end = 0
        self.grouped_pos = 0
        self.rate = rate
        self.capacity = capacity
        self.readings = 0

    def step(self) -> None:
        self.grouped_pos = self.grouped_end  # what was forwarded by the last step
        took = min(self.capacity, self.raw_end - self.raw_pos)
        self.raw_pos += took
        self.grouped_end += took
        self.raw_end += self.rate

    async def ends(self) -> Ends:
        self.readings += 1
        self.step()
        return Ends({("raw", 0): (self.raw_pos, self.raw_end),
                     ("grouped", 0): (self.grouped_pos, self.grouped_end)})

    async def lag(self) -> dict[str, int]:
        reading = await self.ends()
        return {tp[0]: end - pos for tp, (pos, end) in reading.ends.items()}


async def _no_sleep(_s: float) -> None:
    return None


def _drain(lag: Lag, stall_s: float = 30.0) -> tuple[bool, dict[str, int]]:
    clock = iter(float(t) for t in range(100_000)).__next__
    result = asyncio.run(drain(lag, DrainPolicy(stall_s=stall_s), sleep=_no_sleep,
                               clock=clock, report=lambda _msg: None))
    return result.drained, result.left


def test_a_stop_under_steady_traffic_drains_what_the_broker_held_and_ends() -> None:
    traffic = SteadyTraffic(backlog=5_000, rate=800, capacity=1_000)
    drained, left = _drain(StopBacklog(traffic.ends))
    assert drained and left == {}
    # everything held at the stop was processed, and forwarded and read in turn
    assert traffic.raw_pos >= 5_000 and traffic.grouped_pos >= 5_000
    assert traffic.readings < 60


def test_waiting_for_no_backlog_under_the_same_traffic_never_ends() -> None:
    """What the drain did before: producers keep a backlog, so it never drains."""
    traffic = SteadyTraffic(backlog=5_000, rate=800, capacity=800)
    drained, left = _drain(traffic.lag, stall_s=200)
    assert not drained and left["raw"] > 0
    traffic = SteadyTraffic(backlog=5_000, rate=800, capacity=800)
    drained, left = _drain(StopBacklog(traffic.ends), stall_s=200)
    # at capacity == rate the backlog at the stop still shrinks by what is processed
    assert drained and traffic.raw_pos >= 5_000 and traffic.grouped_pos >= 5_000


def test_no_target_is_fixed_from_ends_not_asked_of_the_broker() -> None:
    readings = iter([Ends({("raw", 0): (0, 3)}, fresh=False),
                     Ends({("raw", 0): (3, 10)}),
                     Ends({("raw", 0): (3, 12)}, fresh=False)])

    async def partitions() -> Ends:
        return next(readings)

    backlog = StopBacklog(partitions, rounds=1)
    assert asyncio.run(backlog()) == {"raw": 3}  # reported, not a target
    assert asyncio.run(backlog()) == {"raw": 7}  # the target is 10
    assert asyncio.run(backlog()) == {"raw": 7}  # still 10, not 12


def test_a_revoked_partition_stops_counting_and_an_assigned_one_waits_for_the_next_round() -> None:
    readings = iter([Ends({("raw", 0): (0, 10), ("raw", 1): (0, 10)}),
                     Ends({("raw", 0): (10, 20), ("raw", 2): (0, 30)}),  # 1 revoked, 2 new
                     Ends({("raw", 0): (20, 25), ("raw", 2): (5, 30)})])

    async def partitions() -> Ends:
        return next(readings)

    backlog = StopBacklog(partitions, rounds=2)
    assert asyncio.run(backlog()) == {"raw": 20}
    # partition 0 reached, 1 gone: round two targets 20 and 30 (10 + 30 left)
    assert asyncio.run(backlog()) == {"raw": 40}
    assert asyncio.run(backlog()) == {"raw": 25}
    assert backlog.round == 2


def test_rounds_must_be_at_least_one() -> None:
    async def partitions() -> Ends:
        return Ends({})

    with pytest.raises(ValueError, match="rounds must be >= 1"):
        StopBacklog(partitions, rounds=0)


def test_a_second_signal_ends_a_read_of_the_backlog_that_waits_on_a_dead_broker() -> None:
    # one read asks the broker for a flush and offsets, each with its own timeout: with
    # the broker killed it took minutes, and the drain saw the second Ctrl-C only after
    reads: list[str] = []

    async def answered() -> dict[str, int]:
        reads.append("answered")
        return {"llmpulse.inference": 5}

    async def hung() -> dict[str, int]:
        reads.append("hung")
        await asyncio.sleep(3600)
        return {}

    lags = iter([answered, hung])

    async def lag() -> dict[str, int]:
        return await next(lags)()

    async def run() -> object:
        abort = asyncio.Event()
        task = asyncio.ensure_future(drain(lag, abort=abort, sleep=_no_sleep,
                                           report=lambda _msg: None))
        while reads != ["answered", "hung"]:
            await asyncio.sleep(0.01)
        abort.set()
        return await asyncio.wait_for(task, 5.0)  # not an hour

    result = asyncio.run(run())
    assert result.drained is False  # type: ignore[attr-defined]
    assert result.reason == "stopped at the operator's request"  # type: ignore[attr-defined]
    assert result.left == {"llmpulse.inference": 5}  # type: ignore[attr-defined]
