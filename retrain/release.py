"""One release step: register a candidate, run the gates, then reject, canary or promote.

Nothing is deployed when a gate fails: the version is kept as ``rejected``
with the failed gates as its reasons, and a ``rejected`` deployment row
records the decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmpulse.retrain.gates import GateConfig, GateReport, evaluate
from llmpulse.retrain.registry import Deployment, ModelRegistry, ModelVersion, check_share
from llmpulse.retrain.trainer import Artifact, Dataset

__all__ = ["ReleaseOutcome", "release"]


@dataclass
class ReleaseOutcome:
    """What happened to a candidate: its registry entry, the gate report and the rows."""

    version: ModelVersion
    report: GateReport
    deployments: list[Deployment] = field(default_factory=list)

    @property
    def deployed(self) -> bool:
        return self.report.passed and bool(self.deployments) and self.deployments[-1].stage != "rejected"

    def rows(self) -> list[dict[str, Any]]:
        """Rows for the ``deployments`` table."""
        return [d.row() for d in self.deployments]


def release(
    registry: ModelRegistry,
    model: str,
    candidate: Artifact,
    eval_set: Dataset,
    *,
    trigger: str = "manual",
    canary_share: float = 0.0,
    deploy: bool = True,
    config: GateConfig = GateConfig(),
    latency_probe: Callable[[Any, Any | None], tuple[float, float | None]] | None = None,
    loader: Callable[[Path, str], Any] | None = None,
) -> ReleaseOutcome:
    """Register ``candidate``, gate it against the current version, then release it.

    ``canary_share > 0`` starts a canary instead of promoting; ``deploy=False``
    stops after the gates (the version stays a candidate).
    """
    if canary_share != 0:  # NaN, negative or >= 1 read as "promote" before
        check_share(canary_share)
    current = registry.current(model)
    mv = registry.register(
        model,
        candidate.path,
        metrics=dict(candidate.metrics),
        data_window=eval_set.window,
        trigger=trigger,
    )
    try:
        report = evaluate(
            candidate,
            eval_set,
            current_path=current.artifact if current is not None else None,
            config=config,
            latency_probe=latency_probe,
            loader=loader,
        )
    except Exception as exc:
        # a candidate the gates could not judge is refused: left a candidate, it could
        # be deployed by hand without a gate having passed
        registry.reject(model, mv.version, [{"gate": "evaluate", "passed": False,
                                             "reason": f"the gates failed to run: "
                                                       f"{type(exc).__name__}: {exc}"[:500]}],
                        trigger=trigger)
        raise
    metrics = {**candidate.metrics, **report.metrics}
    outcome = ReleaseOutcome(mv, report)
    if not report.passed:
        outcome.deployments.append(registry.reject(model, mv.version, report.reasons(), trigger=trigger))
    elif deploy and canary_share > 0:
        outcome.deployments.append(
            registry.start_canary(model, mv.version, share=canary_share, trigger=trigger, metrics=metrics)
        )
    elif deploy:
        outcome.deployments.append(registry.deploy(model, mv.version, trigger=trigger, metrics=metrics))
    outcome.version = registry.get(model, mv.version)
    return outcome
