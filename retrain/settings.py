"""The retraining service's settings: what it trains and how a canary is judged.

Both objects are frozen and validated on construction; an error is a
:class:`llmpulse.config.ConfigError` whose message starts with the key at
fault (a field such as ``canary.share``, or the environment variable it was
read from).

>>> CanaryPolicy(share=1.5)
Traceback (most recent call last):
...
llmpulse.config.ConfigError: canary.share: must be within (0, 1), got 1.5
>>> RetrainSettings.from_env({"LLMPULSE_CANARY_SHARE": "1"})
Traceback (most recent call last):
...
llmpulse.config.ConfigError: LLMPULSE_CANARY_SHARE: must be within (0, 1), got '1'
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from llmpulse.config import ConfigError
from llmpulse.retrain.dataset import DatasetPolicy
from llmpulse.retrain.gates import GateConfig
from llmpulse.retrain.reference import REFERENCE_MODEL

__all__ = ["CanaryPolicy", "RetrainSettings"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class CanaryPolicy:
    """How long a canary serves and what counts as a regression.

    ``share`` of the requests (within (0, 1)) go to the canary, the rest to
    the current version. The canary is judged once it and the current version
    each have ``min_samples`` inferences and ``min_labelled`` labelled ones
    (the canary is compared with the current version's live figures, not with
    nothing); it is promoted only after
    ``min_duration_s`` as well. Regressions (any one rolls back): accuracy
    below the current version's minus ``accuracy_tolerance``; p99 latency
    above ``current * (1 + latency_margin) + latency_slack_ms``; error rate
    above the current's plus ``error_margin``. Without enough evidence after
    ``max_wait_s`` the canary is promoted or rolled back as ``on_no_evidence``
    says (default promote: the offline gates already passed).
    """

    share: float = 0.2
    min_duration_s: float = 60.0
    min_samples: int = 50
    min_labelled: int = 30
    max_wait_s: float = 900.0
    poll_s: float = 2.0
    accuracy_tolerance: float = 0.03
    latency_margin: float = 0.5
    latency_slack_ms: float = 5.0
    error_margin: float = 0.02
    on_no_evidence: str = "promote"

    def __post_init__(self) -> None:
        # At 1 the current version gets no traffic and the canary is compared with
        # nothing; the comparison below also refuses NaN.
        if not isinstance(self.share, int | float) or isinstance(self.share, bool) \
                or not 0.0 < self.share < 1.0:
            raise ConfigError(f"canary.share: must be within (0, 1), got {self.share!r}")
        for f in fields(self):
            if f.name in ("share", "on_no_evidence"):
                continue
            v = getattr(self, f.name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v < math.inf:
                raise ConfigError(f"canary.{f.name}: must be a finite number >= 0, got {v!r}")
        if self.poll_s <= 0:
            raise ConfigError(f"canary.poll_s: must be > 0, got {self.poll_s!r}")
        if self.on_no_evidence not in ("promote", "rollback"):
            raise ConfigError(f"canary.on_no_evidence: must be promote or rollback, "
                              f"got {self.on_no_evidence!r}")


@dataclass(frozen=True)
class RetrainSettings:
    """The retraining service's own settings.

    ``models``: the models it can train (others are skipped with a reason);
    ``trainer`` and ``trainer_options``: see :func:`llmpulse.retrain.trainer.load_trainer`;
    ``serving``: serve the promoted version in the stack (``/serve/...``),
    bootstrapping the reference version on first start.
    """

    enabled: bool = True
    serving: bool = False
    models: tuple[str, ...] = (REFERENCE_MODEL,)
    trainer: str = "head"
    trainer_options: Mapping[str, Any] = field(default_factory=dict)
    dataset: DatasetPolicy = field(default_factory=DatasetPolicy)
    canary: CanaryPolicy = field(default_factory=CanaryPolicy)
    gates: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        if not self.models or not all(isinstance(m, str) and m for m in self.models):
            raise ConfigError(f"models: must be one or more model names, got {self.models!r}")
        if not self.trainer:
            raise ConfigError("trainer: must name a trainer (e.g. 'head'), got ''")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetrainSettings:
        """``LLMPULSE_RETRAIN=0`` disables the service, ``LLMPULSE_SERVING=1`` serves models,
        ``LLMPULSE_RETRAIN_MODELS`` (comma-separated), ``LLMPULSE_RETRAIN_TRAINER``,
        ``LLMPULSE_CANARY_SHARE``, ``LLMPULSE_CANARY_MIN_S``, ``LLMPULSE_CANARY_MAX_WAIT_S``.

        >>> s = RetrainSettings.from_env({"LLMPULSE_SERVING": "1", "LLMPULSE_CANARY_SHARE": "0.5",
        ...                               "LLMPULSE_CANARY_MAX_WAIT_S": "90"})
        >>> s.serving, s.canary.share, s.canary.max_wait_s, s.models
        (True, 0.5, 90.0, ('intent-router',))
        >>> RetrainSettings.from_env({"LLMPULSE_CANARY_MAX_WAIT_S": "nan"})
        Traceback (most recent call last):
        ...
        llmpulse.config.ConfigError: LLMPULSE_CANARY_MAX_WAIT_S: must be a finite number >= 0, got 'nan'
        >>> RetrainSettings.from_env({"LLMPULSE_SERVING": "maybe"})
        Traceback (most recent call last):
        ...
        llmpulse.config.ConfigError: LLMPULSE_SERVING: must be one of 1, true, yes, on, 0, false, no, off; got 'maybe'
        """
        env = os.environ if env is None else env

        def flag(key: str, default: bool) -> bool:
            text = env.get(key)
            if text is None or text.strip() == "":
                return default
            v = text.strip().lower()
            if v not in _TRUE + _FALSE:
                raise ConfigError(f"{key}: must be one of {', '.join(_TRUE + _FALSE)}; got {text!r}")
            return v in _TRUE

        def number(key: str) -> float | None:
            text = env.get(key)
            if text is None or text.strip() == "":
                return None
            try:
                v = float(text)
            except ValueError:
                raise ConfigError(f"{key}: not a number: {text!r}") from None
            if not 0 <= v < math.inf:  # also refuses NaN
                raise ConfigError(f"{key}: must be a finite number >= 0, got {text!r}")
            return v

        canary: dict[str, float] = {}
        if (share := number("LLMPULSE_CANARY_SHARE")) is not None:
            if not 0 < share < 1:
                raise ConfigError(f"LLMPULSE_CANARY_SHARE: must be within (0, 1), got "
                                  f"{env['LLMPULSE_CANARY_SHARE']!r}")
            canary["share"] = share
        if (min_s := number("LLMPULSE_CANARY_MIN_S")) is not None:
            canary["min_duration_s"] = min_s
        if (wait_s := number("LLMPULSE_CANARY_MAX_WAIT_S")) is not None:
            canary["max_wait_s"] = wait_s
        raw_models = env.get("LLMPULSE_RETRAIN_MODELS", "")
        models = tuple(m.strip() for m in raw_models.split(",") if m.strip())
        if raw_models.strip() and not models:
            raise ConfigError(f"LLMPULSE_RETRAIN_MODELS: no model name in {raw_models!r}")
        return cls(
            enabled=flag("LLMPULSE_RETRAIN", True),
            serving=flag("LLMPULSE_SERVING", False),
            models=models or (REFERENCE_MODEL,),
            trainer=(env.get("LLMPULSE_RETRAIN_TRAINER") or "head").strip() or "head",
            canary=CanaryPolicy(**canary),  # type: ignore[arg-type]
        )
