"""``llmpulse retrain``, ``llmpulse deploy`` and ``llmpulse rollback``.

Each command has a ``configure_*(parser)`` that adds its flags and a
``run_*(args, settings=None)`` that runs it and returns the exit code.
The registry lives in ``<data-dir>/registry`` (``--data-dir``, else the
settings' ``data_dir``, else ``$LLMPULSE_DATA_DIR``, else ``./.llmpulse``).
With ``--serve-url`` a running model server (:mod:`llmpulse.retrain.serving`) is told
to hot-swap to the new version (or to start the canary); when it cannot be told,
the registry has changed but the server has not: the command says both and
exits 3. Deployment rows are kept in the registry file; ``--json`` prints them
for the caller to insert. ``--canary SHARE`` is a share within (0, 1); 0 (the
default) promotes.

>>> import argparse
>>> p = argparse.ArgumentParser(); configure_rollback(p)
>>> p.parse_args(["intent-router", "--data-dir", "/tmp/x"]).model
'intent-router'
>>> canary_share("0.25"), canary_share("0")
(0.25, 0.0)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmpulse.retrain.registry import Deployment, ModelRegistry, RegistryError, check_share

if TYPE_CHECKING:
    from llmpulse.retrain.trainer import Dataset

__all__ = [
    "canary_share",
    "configure_deploy",
    "configure_retrain",
    "configure_rollback",
    "run_deploy",
    "run_retrain",
    "run_rollback",
]

DEFAULT_MODEL = "intent-router"


def _data_dir(args: argparse.Namespace, settings: Any) -> Path:
    if getattr(args, "data_dir", None):
        return Path(args.data_dir)
    if settings is not None and getattr(settings, "data_dir", None) is not None:
        return Path(settings.data_dir)
    return Path(os.environ.get("LLMPULSE_DATA_DIR") or ".llmpulse")


SERVER_NOT_UPDATED = 3
"""Exit code when the registry changed but the model server at ``--serve-url`` did not."""


def canary_share(text: str) -> float:
    """``--canary``: 0 (promote), or a traffic share within (0, 1).

    >>> canary_share("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be 0 (promote) or a share within (0, 1), got 'nan'
    """
    try:
        share = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if share != 0.0 and not 0.0 < share < 1.0:  # NaN fails both tests
        raise argparse.ArgumentTypeError(f"must be 0 (promote) or a share within (0, 1), got {text!r}")
    return share


def _share_problem(share: Any) -> str:
    """'' when ``share`` is 0 or a canary share, else what is wrong (for namespaces not parsed here)."""
    try:
        if float(share) == 0.0:
            return ""
        check_share(share)
    except (TypeError, ValueError, RegistryError):
        return f"--canary must be 0 (promote) or a share within (0, 1), got {share!r}"
    return ""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="where the registry lives (default: settings)")
    parser.add_argument("--serve-url", default=None, help="model server to update, e.g. http://127.0.0.1:8700")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")


def configure_retrain(parser: argparse.ArgumentParser) -> None:
    """Flags of ``llmpulse retrain``."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help="registered model name")
    parser.add_argument("--trainer", default="head",
                        help="built-in name, entry point (group llmpulse.trainers) or module:Class")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed of the training data")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of simulated traffic")
    parser.add_argument("--rate", type=float, default=10.0, help="simulated requests per second")
    parser.add_argument("--test-share", type=float, default=0.25, help="held-out share for the gates")
    parser.add_argument("--trigger", default="manual", help="alert id that triggered this run")
    parser.add_argument("--canary", type=canary_share, default=0.0, metavar="SHARE",
                        help="start a canary with this traffic share, within (0, 1), instead of promoting")
    parser.add_argument("--no-deploy", action="store_true", help="train and gate only")
    parser.add_argument("--fine-tune-encoder", action="store_true",
                        help="fine-tune MiniLM with torch before fitting the head (slow on CPU)")
    _common(parser)


def configure_deploy(parser: argparse.ArgumentParser) -> None:
    """Flags of ``llmpulse deploy``."""
    parser.add_argument("model", help="registered model name")
    parser.add_argument("version", help="version to deploy")
    parser.add_argument("--canary", type=canary_share, default=0.0, metavar="SHARE",
                        help="serve this share of traffic, within (0, 1), instead of promoting")
    parser.add_argument("--trigger", default="manual", help="alert id or 'manual'")
    _common(parser)


def configure_rollback(parser: argparse.ArgumentParser) -> None:
    """Flags of ``llmpulse rollback``."""
    parser.add_argument("model", help="registered model name")
    parser.add_argument("--trigger", default="manual", help="alert id or 'manual'")
    _common(parser)


def _post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    from llmpulse.auth import stack_request

    out: dict[str, Any] = stack_request(url, path, body, timeout=120)
    return out


def _served(url: str) -> str | None:
    """The version the server at ``url`` says it serves, or None when it does not answer."""
    try:
        health = _get(url, "/health")
    except (OSError, ValueError):
        return None
    version = health.get("version") if isinstance(health, dict) else None
    return str(version) if version is not None else None


def _get(url: str, path: str) -> Any:
    from llmpulse.auth import stack_request

    return stack_request(url, path, timeout=10)


def _notify(url: str | None, registry: ModelRegistry, d: Deployment, share: float = 0.0) -> tuple[bool, str]:
    """Tell the server at ``url`` about ``d``: ``(done, what to print)``.

    When the server cannot be told, the text says what the registry now says
    and what the server still serves (if it answers ``/health``).
    """
    if not url:
        return True, ""
    mv = registry.get(d.model, d.version)
    try:
        if d.stage == "canary":
            _post(url, "/admin/canary", {"path": mv.artifact, "version": mv.version, "share": share})
            return True, f"server at {url} routes {share:.0%} to version {mv.version}"
        _post(url, "/admin/swap", {"path": mv.artifact, "version": mv.version})
        return True, f"server at {url} now serves version {mv.version}"
    except (OSError, ValueError) as exc:  # urllib.error.URLError is an OSError; ValueError: not JSON
        detail = str(exc)
        if isinstance(exc, urllib.error.HTTPError):
            try:
                body = json.loads(exc.read() or b"{}")
                detail = f"HTTP {exc.code}: {body.get('error', body)}"
            except (OSError, ValueError, AttributeError):
                detail = f"HTTP {exc.code}"
        served = _served(url)
        said = (f"version {d.version} serves {share:.0%} as a canary beside version "
                f"{d.previous_version or '-'}" if d.stage == "canary"
                else f"version {d.version} is current (was {d.previous_version or '-'})")
        still = (f"it still serves version {served}" if served is not None
                 else "what it serves is unknown (it does not answer /health)")
        return False, (f"error: the registry changed but the model server did not: the registry now "
                       f"says {d.model} {said}; the server at {url} was not updated ({detail}); "
                       f"{still}")


def _audit(settings: Any, action: str, target: str, outcome: str, detail: dict[str, Any]) -> None:
    """The command's audit record (not for library calls without settings)."""
    if settings is None:
        return
    from llmpulse.audit import AuditEvent
    from llmpulse.audit_record import command_actor, record_command

    record_command(settings, AuditEvent(action, actor=command_actor(), outcome=outcome,
                                        target=target, remote="local", detail=detail))


def _record(settings: Any, rows: list[dict[str, Any]]) -> None:
    """The command's ``deployments`` rows, where the stack and its dashboards see them
    (not for library calls without settings)."""
    if settings is None:
        return
    from llmpulse.audit_record import record_deployments

    record_deployments(settings, rows)


def _print(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj, indent=2, default=str) if args.json else text)


def run_retrain(args: argparse.Namespace, settings: Any = None, *, data: Dataset) -> int:
    """Train on ``data`` (``llmpulse retrain`` draws it from the simulator with ``--seed``,
    ``--duration`` and ``--rate``), gate, register and release (unless ``--no-deploy``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llmpulse.retrain.release import release
    from llmpulse.retrain.trainer import load_trainer

    if problem := _share_problem(args.canary):
        print(f"llmpulse retrain: {problem}", file=sys.stderr)
        return 2
    registry = ModelRegistry(_data_dir(args, settings))
    if len(data) == 0:
        print("llmpulse retrain: no labelled examples to train on", file=sys.stderr)
        return 2
    train, test = data.split(args.test_share, seed=args.seed)
    kwargs = {"fine_tune_encoder": True} if args.fine_tune_encoder else {}
    try:
        trainer = load_trainer(args.trainer, **kwargs)
    except (ValueError, TypeError) as exc:
        print(f"llmpulse retrain: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="llmpulse-train-") as tmp:
        artifact = trainer.fit(train, tmp)
        outcome = release(
            registry, args.model, artifact, test, trigger=args.trigger,
            canary_share=args.canary, deploy=not args.no_deploy,
        )
    _audit(settings, "retrain", f"{args.model}:{outcome.version.version}",
           "ok" if outcome.report.passed else "error",
           {"trigger": args.trigger, "trainer": args.trainer, "stage": outcome.version.stage,
            "deployed": bool(outcome.deployed)})
    _record(settings, outcome.rows())
    lines = [f"{args.model} version {outcome.version.version}: {outcome.version.stage}"]
    for r in outcome.report.results:
        lines.append(f"  {'ok  ' if r.passed else 'FAIL'} {r.gate:<28} {r.measured!s:>12}  limit {r.limit}"
                     + (f"  ({r.reason})" if r.reason else ""))
    updated, note = True, ""
    if outcome.deployed:
        updated, note = _notify(args.serve_url, registry, outcome.deployments[-1], args.canary)
        if note and updated:
            lines.append(note)
    _print(args, {"version": outcome.version.to_dict(), "gates": outcome.report.to_dict(),
                  "deployments": outcome.rows()}, "\n".join(lines))
    if not updated:
        print(f"llmpulse retrain: {note}", file=sys.stderr)
        return SERVER_NOT_UPDATED
    return 0 if outcome.report.passed else 1


def run_deploy(args: argparse.Namespace, settings: Any = None) -> int:
    """Promote (or canary) a registered version."""
    if problem := _share_problem(args.canary):
        _audit(settings, "deploy", f"{args.model}:{args.version}", "error", {"error": problem})
        print(f"llmpulse deploy: {problem}", file=sys.stderr)
        return 2
    registry = ModelRegistry(_data_dir(args, settings))
    try:
        if args.canary > 0:
            d = registry.start_canary(args.model, args.version, share=args.canary, trigger=args.trigger)
        else:
            d = registry.deploy(args.model, args.version, trigger=args.trigger)
    except RegistryError as exc:
        _audit(settings, "deploy", f"{args.model}:{args.version}", "error", {"error": str(exc)})
        print(f"llmpulse deploy: {exc}", file=sys.stderr)
        return 1
    _audit(settings, "deploy", f"{d.model}:{d.version}", "ok",
           {"stage": d.stage, "previous_version": d.previous_version, "trigger": d.trigger})
    _record(settings, [d.row()])
    updated, note = _notify(args.serve_url, registry, d, args.canary)
    _print(args, d.row(), f"{d.model}: version {d.version} {d.stage} (was {d.previous_version or '-'})"
           + (f"\n{note}" if note and updated else ""))
    if not updated:
        print(f"llmpulse deploy: {note}", file=sys.stderr)
        return SERVER_NOT_UPDATED
    return 0


def run_rollback(args: argparse.Namespace, settings: Any = None) -> int:
    """Return to the previous promoted version."""
    registry = ModelRegistry(_data_dir(args, settings))
    try:
        d = registry.rollback(args.model, trigger=args.trigger)
    except RegistryError as exc:
        _audit(settings, "rollback", args.model, "error", {"error": str(exc)})
        print(f"llmpulse rollback: {exc}", file=sys.stderr)
        return 1
    _audit(settings, "rollback", f"{d.model}:{d.version}", "ok",
           {"previous_version": d.previous_version, "trigger": d.trigger})
    _record(settings, [d.row()])
    updated, note = _notify(args.serve_url, registry, d)
    _print(args, d.row(), f"{d.model}: rolled back {d.previous_version} -> version {d.version}"
           + (f"\n{note}" if note and updated else ""))
    if not updated:
        print(f"llmpulse rollback: {note}", file=sys.stderr)
        return SERVER_NOT_UPDATED
    return 0
