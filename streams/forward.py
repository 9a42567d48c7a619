"""Several groups in one ``llmpulse.grouped`` message: packing and unpacking.

The ingest agents forward each valid event to ``llmpulse.grouped`` so that
every event of a group (app/model/model_version) reaches the one worker that
owns the group's partition. One message per (group, source partition) and
batch costs a produce, a fetch and a Faust event per group: with a thousand
groups that is about one message per event. Here the lines bound for one
``llmpulse.grouped`` partition travel together: the message goes to the
partition explicitly (the one Kafka's default partitioner gives the group's
key, so a group lands where a keyed message would) and a header lists its
groups, each group's lines consecutive and in order.

>>> msgs = pack_groups({b"a/m/1": [b'{"i":1}', b'{"i":2}'], b"a/m/2": [b'{"i":3}']})
>>> [(value, header) for value, header in msgs]
[(b'{"i":1}\\n{"i":2}\\n{"i":3}', b'[["a/m/1",2],["a/m/2",1]]')]
>>> unpack_groups(*msgs[0])
[(b'a/m/1', b'{"i":1}\\n{"i":2}'), (b'a/m/2', b'{"i":3}')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

__all__ = ["GROUPS_HEADER", "MAX_FORWARD_BYTES", "group_key", "grouped_partition", "header_value",
           "listed_keys", "pack_groups", "unpack_groups"]

GROUPS_HEADER = "llmpulse-groups"
"""Header of a forwarded message holding several groups: JSON ``[[key, lines], ...]``."""

MAX_FORWARD_BYTES = 512 * 1024


def group_key(app: str, model: str, version: str) -> bytes:
    """The routing key of a group.

    >>> group_key("support", "gpt-4o-mini", "2024-07-18")
    b'support/gpt-4o-mini/2024-07-18'
    """
    return f"{app}/{model}/{version}".encode()


@lru_cache(maxsize=65_536)
def grouped_partition(key: bytes, partitions: int) -> int:
    """The ``llmpulse.grouped`` partition of the group keyed ``key``: the one Kafka's
    default partitioner (murmur2, as the Java client and aiokafka compute it) picks,
    so packed messages and messages keyed by group agree.

    >>> grouped_partition(b"support/gpt-4o-mini/2024-07-18", 4)
    2
    >>> from aiokafka.partitioner import DefaultPartitioner
    >>> keys = [f"app/m/{i}".encode() for i in range(50)]
    >>> all(grouped_partition(k, 4) == DefaultPartitioner()(k, [0, 1, 2, 3], None) for k in keys)
    True
    """
    if partitions < 1:
        raise ValueError(f"ingest.partitions: need >= 1, got {partitions!r}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def pack_groups(groups: Mapping[bytes, Sequence[bytes]], limit: int = MAX_FORWARD_BYTES,
                ) -> list[tuple[bytes, bytes]]:
    """``(value, groups header)`` messages holding every line of ``groups`` (key ->
    lines, in order), each value at most about ``limit`` bytes (a line longer than
    that travels alone); a group may continue in the next message.

    >>> [h for _, h in pack_groups({b"g/a/1": [b"x" * 6] * 3, b"g/b/1": [b"y"]}, limit=14)]
    [b'[["g/a/1",2]]', b'[["g/a/1",1],["g/b/1",1]]']
    """
    out: list[tuple[bytes, bytes]] = []
    lines: list[bytes] = []
    runs: list[list[object]] = []
    size = 0
    for key, group_lines in groups.items():
        name = key.decode("utf-8", "surrogateescape")
        run: list[object] | None = None
        for ln in group_lines:
            if lines and size + len(ln) > limit:
                out.append((b"\n".join(lines), orjson.dumps(runs)))
                lines, runs, size, run = [], [], 0, None
            if run is None:
                run = [name, 0]
                runs.append(run)
            run[1] = int(run[1]) + 1  # type: ignore[call-overload]
            lines.append(ln)
            size += len(ln) + 1
    if lines:
        out.append((b"\n".join(lines), orjson.dumps(runs)))
    return out


def _runs(header: bytes) -> list[list[Any]]:
    try:
        runs = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{GROUPS_HEADER} header is not JSON: {exc}") from None
    if not isinstance(runs, list) or not all(
            isinstance(r, list) and len(r) == 2 and isinstance(r[0], str)
            and type(r[1]) is int and r[1] > 0 for r in runs):
        raise ValueError(f"{GROUPS_HEADER} header must be a list of [key, count > 0]")
    return runs


def listed_keys(header: bytes) -> list[bytes]:
    """The group keys a groups header lists (``ValueError`` if it is not one).

    >>> listed_keys(b'[["a/m/1",2],["a/m/2",1]]')
    [b'a/m/1', b'a/m/2']
    """
    return [r[0].encode("utf-8", "surrogateescape") for r in _runs(header)]


def unpack_groups(value: bytes, header: bytes) -> list[tuple[bytes, bytes]]:
    """``(group key, its lines)`` of a packed message, in order. A header that does
    not describe the value (not a list of ``[key, count]`` whose counts add up to the
    value's lines) raises ``ValueError``.

    >>> unpack_groups(b"a\\nb", b'[["k",3]]')
    Traceback (most recent call last):
    ...
    ValueError: llmpulse-groups header counts 3 line(s), the message has 2
    """
    runs = _runs(header)
    lines = value.split(b"\n")
    total = sum(r[1] for r in runs)
    if total != len(lines):
        raise ValueError(f"{GROUPS_HEADER} header counts {total} line(s), "
                         f"the message has {len(lines)}")
    if len(runs) == 1:
        return [(runs[0][0].encode("utf-8", "surrogateescape"), value)]
    out: list[tuple[bytes, bytes]] = []
    i = 0
    for name, n in runs:
        out.append((name.encode("utf-8", "surrogateescape"), b"\n".join(lines[i:i + n])))
        i += n
    return out


def header_value(headers: object, name: str) -> bytes | None:
    """The value of header ``name`` in Kafka headers (a mapping or ``(name, value)`` pairs).

    >>> header_value([("a", b"1"), ("b", b"2")], "b"), header_value({"a": b"1"}, "b")
    (b'2', None)
    """
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for k, v in items:  # type: ignore[attr-defined]
        if k == name:
            return bytes(v)
    return None
