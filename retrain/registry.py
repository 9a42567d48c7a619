"""The model registry: versions, lineage, stages, deployments; one JSON file per model.

``<data-dir>/registry/<model>.json`` holds every registered version of a
model with its artifact path and sha256, metrics, lineage (the data window it
was trained on, the alert that triggered it, its parent version) and stage:

``candidate``  registered, not yet released;
``canary``     serving a share of the traffic;
``promoted``   serving all traffic now or earlier (``current`` says which);
``rolled_back`` taken out of service after it had been promoted;
``rejected``   refused by a gate (the reasons are kept) and never deployed.

Each change rewrites the file atomically (temporary file, fsync, rename)
under an exclusive lock, so concurrent writers and a crash mid-write leave
either the old or the new file. Artifacts are copied (hard-linked when
possible) into ``<data-dir>/registry/<model>/<version>/`` so a version keeps
its bytes when the training folder is cleaned up; the sha256 is checked again
before a deploy.

Every release step returns a :class:`Deployment`, whose :meth:`~Deployment.row`
is a row for the ``deployments`` table (the caller inserts it). In a row,
``version`` is the version serving after the step and ``previous_version`` the
one it replaced; a rollback row has stage ``rolled_back`` and names the
withdrawn version in ``metrics["rolled_back_version"]``.

>>> import tempfile, pathlib
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> for name in ("a.onnx", "b.onnx"):
...     _ = (tmp / name).write_bytes(name.encode())
>>> reg = ModelRegistry(tmp, clock=lambda: 1_700_000_000.0)
>>> v1 = reg.register("router", tmp / "a.onnx", metrics={"accuracy": 0.9})
>>> v2 = reg.register("router", tmp / "b.onnx", trigger="alert-17")
>>> v1.version, v2.version, v2.lineage["parent"], v2.stage
('1', '2', None, 'candidate')
>>> reg.deploy("router", "1").row()["stage"]
'promoted'
>>> d = reg.deploy("router", "2", trigger="alert-17")
>>> d.version, d.previous_version, reg.get("router", "2").lineage["parent"]
('2', '1', '1')
>>> r = reg.rollback("router")
>>> r.version, r.previous_version, r.stage, reg.current("router").version, reg.get("router", "2").stage
('1', '2', 'rolled_back', '1', 'rolled_back')
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "STAGES",
    "Deployment",
    "ModelRegistry",
    "ModelVersion",
    "RegistryError",
    "check_share",
    "sha256_file",
]

STAGES: tuple[str, ...] = ("candidate", "canary", "promoted", "rolled_back", "rejected")

# matched with fullmatch: "$" alone would accept a name ending in a newline
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RegistryError(RuntimeError):
    """A registry operation is not possible (unknown version, nothing to roll back to, ...)."""


def check_share(share: float) -> float:
    """``share`` if it is a canary traffic share, within (0, 1), else :class:`RegistryError`.

    At 0 the canary gets no traffic, at 1 the current version gets none, and
    either way there is nothing to compare.

    >>> check_share(0.2)
    0.2
    >>> check_share(float("nan"))
    Traceback (most recent call last):
    ...
    llmpulse.retrain.registry.RegistryError: canary share must be within (0, 1), got nan
    """
    try:
        value = float(share)
    except (TypeError, ValueError):
        raise RegistryError(f"canary share must be a number within (0, 1), got {share!r}") from None
    if not 0.0 < value < 1.0:  # also refuses NaN
        raise RegistryError(f"canary share must be within (0, 1), got {share!r}")
    return value


_DEPLOYMENT_KEYS = frozenset(("deployment_id", "model", "version", "previous_version", "trigger",
                              "stage", "metrics", "ts"))


def _shape_problem(state: Any) -> str:
    """What is wrong with the shape of a registry file's JSON ('' when nothing is)."""
    if not isinstance(state, dict):
        return f"the top level is {type(state).__name__}, not an object"
    for key in ("model", "history", "versions", "deployments"):
        if key not in state:
            return f"it has no {key!r}"
    if not isinstance(state["model"], str):
        return "'model' is not a string"
    if state.get("current") is not None and not isinstance(state["current"], str):
        return "'current' is neither null nor a string"
    if not isinstance(state["history"], list) or not all(isinstance(v, str) for v in state["history"]):
        return "'history' is not a list of versions"
    if not isinstance(state["versions"], list):
        return "'versions' is not a list"
    for i, v in enumerate(state["versions"]):
        if not isinstance(v, dict):
            return f"versions[{i}] is not an object"
        for key in ("version", "artifact", "sha256", "stage"):
            if not isinstance(v.get(key), str):
                return f"versions[{i}] has no string {key!r}"
        if v["stage"] not in STAGES:
            return f"versions[{i}] has an unknown stage {v['stage']!r}"
        for key in ("metrics", "lineage"):
            if not isinstance(v.get(key, {}), dict):
                return f"versions[{i}].{key} is not an object"
        if not isinstance(v.get("reasons", []), list):
            return f"versions[{i}].reasons is not a list"
    known = {v["version"] for v in state["versions"]}
    if state.get("current") is not None and state["current"] not in known:
        return f"the current version {state['current']!r} is not among its versions"
    if not isinstance(state["deployments"], list):
        return "'deployments' is not a list"
    for i, d in enumerate(state["deployments"]):
        if not isinstance(d, dict) or set(d) != _DEPLOYMENT_KEYS:
            return f"deployments[{i}] is not a deployment row"
    return ""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"abc")
    >>> sha256_file(f.name)[:16]
    'ba7816bf8f01cfea'
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ModelVersion:
    """One registered version of a model."""

    model: str
    version: str
    artifact: str
    sha256: str
    stage: str = "candidate"
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    reasons: list[dict[str, Any]] = field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelVersion:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class Deployment:
    """One release step, shaped as a row of the ``deployments`` table."""

    deployment_id: str
    model: str
    version: str
    previous_version: str
    trigger: str
    stage: str
    metrics: dict[str, Any]
    ts: float

    def row(self) -> dict[str, Any]:
        """The ``deployments`` row: ``metrics`` as a JSON string, ``ts`` in epoch seconds."""
        d = asdict(self)
        d["metrics"] = json.dumps(self.metrics, sort_keys=True, default=str)
        return d


class ModelRegistry:
    """Versions and deployments of models under ``<data_dir>/registry/``.

    ``clock`` gives epoch seconds (injected in tests). ``copy_artifacts``
    keeps a registry-owned copy of each artifact's folder files.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        copy_artifacts: bool = True,
    ) -> None:
        self.root = Path(data_dir) / "registry"
        self.clock = clock
        self.copy_artifacts = copy_artifacts

    # -- storage ------------------------------------------------------------------

    def _file(self, model: str) -> Path:
        if not isinstance(model, str) or not _NAME.fullmatch(model):
            raise RegistryError(
                f"model name {model!r} must be letters, digits, '.', '_' or '-' (at most 128)"
            )
        return self.root / f"{model}.json"

    @contextlib.contextmanager
    def _edit(self, model: str) -> Iterator[dict[str, Any]]:
        path = self._file(model)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{model}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self._read(model)
                yield state
                self._write(path, state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self, model: str) -> dict[str, Any]:
        path = self._file(model)
        if not path.is_file():
            return {"model": model, "current": None, "history": [], "versions": [], "deployments": []}
        try:
            state = json.loads(path.read_text())
        except ValueError as exc:
            raise RegistryError(f"registry file {path} is not valid JSON: {exc}") from None
        problem = _shape_problem(state)
        if problem:
            raise RegistryError(f"registry file {path} is not a model registry: {problem}")
        result: dict[str, Any] = state
        return result

    @staticmethod
    def _write(path: Path, state: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(state, fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @staticmethod
    def _find(state: Mapping[str, Any], version: str) -> dict[str, Any]:
        for v in state["versions"]:
            if v["version"] == version:
                return dict(v)
        raise RegistryError(f"model {state['model']} has no version {version!r}")

    @staticmethod
    def _put(state: dict[str, Any], mv: ModelVersion) -> None:
        state["versions"] = [
            mv.to_dict() if v["version"] == mv.version else v for v in state["versions"]
        ]

    # -- reading ---------------------------------------------------------------------

    def models(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json")) if self.root.is_dir() else []

    def versions(self, model: str) -> list[ModelVersion]:
        return [ModelVersion.from_dict(v) for v in self._read(model)["versions"]]

    def get(self, model: str, version: str) -> ModelVersion:
        return ModelVersion.from_dict(self._find(self._read(model), str(version)))

    def current(self, model: str) -> ModelVersion | None:
        """The promoted version serving all traffic, or None before the first deploy."""
        state = self._read(model)
        cur = state.get("current")
        return None if cur is None else ModelVersion.from_dict(self._find(state, cur))

    def canary(self, model: str) -> ModelVersion | None:
        state = self._read(model)
        for v in state["versions"]:
            if v["stage"] == "canary":
                return ModelVersion.from_dict(v)
        return None

    def deployments(self, model: str) -> list[Deployment]:
        return [Deployment(**d) for d in self._read(model)["deployments"]]

    # -- writing ---------------------------------------------------------------------

    def register(
        self,
        model: str,
        artifact: str | os.PathLike[str],
        *,
        metrics: Mapping[str, Any] | None = None,
        data_window: tuple[float, float] | None = None,
        trigger: str = "manual",
        parent: str | None = None,
        version: str | None = None,
    ) -> ModelVersion:
        """Add a candidate version (next integer unless ``version`` is given).

        ``parent`` defaults to the current version. Sibling files of the
        artifact (``head.npz``, ``card.json``) are kept with it.
        """
        src = Path(artifact)
        if not src.is_file():
            raise RegistryError(f"artifact {src} does not exist")
        with self._edit(model) as state:
            taken = {v["version"] for v in state["versions"]}
            if version is None:
                nums = [int(v) for v in taken if v.isdigit()]
                version = str(max(nums, default=0) + 1)
            version = str(version)
            if version in taken:
                raise RegistryError(f"model {model} already has a version {version!r}")
            if not _NAME.fullmatch(version):
                raise RegistryError(f"version {version!r} must be letters, digits, '.', '_' or '-'")
            stored = self._store(model, version, src) if self.copy_artifacts else src.resolve()
            now = self.clock()
            mv = ModelVersion(
                model=model,
                version=version,
                artifact=str(stored),
                sha256=sha256_file(stored),
                metrics=dict(metrics or {}),
                lineage={
                    "data_window": list(data_window) if data_window is not None else None,
                    "trigger": trigger,
                    "parent": parent if parent is not None else state.get("current"),
                },
                created_at=now,
                updated_at=now,
            )
            state["versions"].append(mv.to_dict())
        return mv

    def _store(self, model: str, version: str, src: Path) -> Path:
        dest_dir = self.root / model / version
        dest_dir.mkdir(parents=True, exist_ok=True)
        siblings = [src] + [p for p in src.parent.iterdir() if p.suffix in (".npz", ".json") and p.is_file()]
        for p in siblings:
            target = dest_dir / p.name
            if target.exists():
                target.unlink()
            try:
                os.link(p, target)
            except OSError:
                shutil.copy2(p, target)
        return dest_dir / src.name

    def _record(
        self,
        state: dict[str, Any],
        version: str,
        previous: str | None,
        trigger: str,
        stage: str,
        metrics: Mapping[str, Any] | None,
    ) -> Deployment:
        d = Deployment(
            deployment_id=uuid.uuid4().hex,
            model=state["model"],
            version=version,
            previous_version=previous or "",
            trigger=trigger,
            stage=stage,
            metrics=dict(metrics or {}),
            ts=self.clock(),
        )
        state["deployments"].append(asdict(d))
        return d

    def set_stage(
        self, model: str, version: str, stage: str, *, reasons: list[dict[str, Any]] | None = None
    ) -> ModelVersion:
        if stage not in STAGES:
            raise RegistryError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
        with self._edit(model) as state:
            mv = ModelVersion.from_dict(self._find(state, version))
            mv.stage = stage
            if reasons:
                mv.reasons = list(reasons)
            mv.updated_at = self.clock()
            self._put(state, mv)
        return mv

    def reject(
        self, model: str, version: str, reasons: list[dict[str, Any]], *, trigger: str = "manual"
    ) -> Deployment:
        """Mark a version refused by a gate, keeping the reasons; it can never be deployed."""
        with self._edit(model) as state:
            mv = ModelVersion.from_dict(self._find(state, version))
            if mv.stage in ("promoted", "canary") and state.get("current") == version:
                raise RegistryError(f"version {version} is serving; roll it back instead")
            mv.stage, mv.reasons, mv.updated_at = "rejected", list(reasons), self.clock()
            self._put(state, mv)
            return self._record(
                state, state.get("current") or "", state.get("current"), trigger, "rejected",
                {"rejected_version": version, "reasons": reasons},
            )

    def start_canary(
        self,
        model: str,
        version: str,
        *,
        share: float,
        trigger: str = "manual",
        metrics: Mapping[str, Any] | None = None,
    ) -> Deployment:
        """Mark ``version`` as serving ``share`` of the traffic beside the current version.

        ``share`` is within (0, 1): the current version keeps serving the rest,
        which is what the canary is compared with. One canary at a time, and
        never the current version itself.
        """
        check_share(share)
        version = str(version)
        with self._edit(model) as state:
            mv = self._checked(state, version)
            if state.get("current") == version:
                raise RegistryError(f"version {version} of {model} is the current version; "
                                    "a canary is a version beside it")
            for v in state["versions"]:
                if v["stage"] == "canary":
                    raise RegistryError(
                        f"version {v['version']} of {model} is already a canary; promote it "
                        f"(llmpulse deploy {model} {v['version']}) or abort it first")
            mv.stage, mv.updated_at = "canary", self.clock()
            self._put(state, mv)
            return self._record(
                state, version, state.get("current"), trigger, "canary",
                {"share": float(share), **dict(metrics or {})},
            )

    def abort_canary(
        self,
        model: str,
        version: str,
        *,
        trigger: str = "manual",
        metrics: Mapping[str, Any] | None = None,
    ) -> Deployment:
        """Take a canary out of service before promotion; the current version keeps serving.

        The version becomes ``rolled_back``; the row has stage ``rolled_back``,
        ``version`` the current version and ``previous_version`` the withdrawn canary
        (as after :meth:`rollback`), with ``metrics["rolled_back_version"]``.
        """
        with self._edit(model) as state:
            mv = ModelVersion.from_dict(self._find(state, version))
            if mv.stage != "canary":
                raise RegistryError(f"version {version} of {model} is {mv.stage}, not a canary")
            if state.get("current") == version:
                raise RegistryError(f"version {version} of {model} is the current version; "
                                    "roll it back instead")
            mv.stage, mv.updated_at = "rolled_back", self.clock()
            self._put(state, mv)
            current = state.get("current") or ""
            return self._record(
                state, current, version, trigger, "rolled_back",
                {"rolled_back_version": version, **dict(metrics or {})},
            )

    def _checked(self, state: dict[str, Any], version: str) -> ModelVersion:
        mv = ModelVersion.from_dict(self._find(state, version))
        if mv.stage == "rejected":
            reasons = "; ".join(r.get("reason", str(r)) for r in mv.reasons) or "no reason kept"
            raise RegistryError(f"version {version} was rejected by a gate ({reasons})")
        path = Path(mv.artifact)
        if not path.is_file():
            raise RegistryError(f"artifact of version {version} is missing: {path}")
        if sha256_file(path) != mv.sha256:
            raise RegistryError(f"artifact of version {version} changed since it was registered: {path}")
        return mv

    def deploy(
        self,
        model: str,
        version: str,
        *,
        trigger: str = "manual",
        metrics: Mapping[str, Any] | None = None,
    ) -> Deployment:
        """Promote ``version`` to serve all traffic (its artifact is verified first)."""
        version = str(version)
        with self._edit(model) as state:
            mv = self._checked(state, version)
            previous = state.get("current")
            if previous == version:
                raise RegistryError(f"version {version} of {model} is already current")
            mv.stage, mv.updated_at = "promoted", self.clock()
            if mv.lineage.get("parent") is None:
                mv.lineage["parent"] = previous
            self._put(state, mv)
            state["current"] = version
            state["history"].append(version)
            return self._record(state, version, previous, trigger, "promoted", metrics)

    def rollback(
        self,
        model: str,
        *,
        trigger: str = "manual",
        metrics: Mapping[str, Any] | None = None,
    ) -> Deployment:
        """Withdraw the current version and restore the promoted version before it.

        Versions rolled back earlier are skipped; with no earlier promoted
        version there is nothing to return to and :class:`RegistryError` is raised.
        """
        with self._edit(model) as state:
            bad = state.get("current")
            if bad is None:
                raise RegistryError(f"model {model} has no current version to roll back")
            restore: str | None = None
            for v in reversed(state["history"]):
                if v == bad:
                    continue
                if self._find(state, v)["stage"] == "promoted":
                    restore = v
                    break
            if restore is None:
                raise RegistryError(f"model {model} has no earlier promoted version to roll back to")
            self._checked(state, restore)
            now = self.clock()
            withdrawn = ModelVersion.from_dict(self._find(state, bad))
            withdrawn.stage, withdrawn.updated_at = "rolled_back", now
            self._put(state, withdrawn)
            # A canary of the withdrawn line goes back to candidate: it no longer serves.
            for v in state["versions"]:
                if v["stage"] == "canary":
                    v["stage"], v["updated_at"] = "candidate", now
            state["current"] = restore
            state["history"].append(restore)
            return self._record(
                state, restore, bad, trigger, "rolled_back",
                {"rolled_back_version": bad, **dict(metrics or {})},
            )
