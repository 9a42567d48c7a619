"""The benchmarks and the ``llmpulse up`` harness import one another in one direction only."""

from __future__ import annotations

import grimp

OWN = ("llmpulse.bench", "llmpulse.harness")


def test_no_import_cycle_through_the_benchmarks_or_the_harness() -> None:
    # grimp reads every import statement, function-local ones included
    graph = grimp.build_graph("llmpulse", "streams", "detectors", "retrain", "dashboards")
    mods = sorted(m for m in graph.modules if m.startswith(OWN))
    assert "llmpulse.bench.fault" in mods and "llmpulse.harness" in mods
    cycles = sorted(
        (a, b) for a in mods for b in graph.find_modules_directly_imported_by(a)
        if graph.chain_exists(importer=b, imported=a)
    )
    assert not cycles, cycles
