"""Every ``llmpulse bench`` runs where ``pip install 'llmpulse[all]'`` is all that was
installed, or says in one line which extra it needs.

The test environment holds more than ``[all]`` (pytest, the test extra's
OpenTelemetry SDK, ...). Here the distributions ``[all]`` installs are worked
out from ``pyproject.toml`` and the installed packages' own requirements, and
everything else is made unimportable: statically for each benchmark's imports
(function-local ones included), and at run time with a ``sitecustomize`` that
refuses modules of other distributions in the command and its children.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.metadata as md
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from functools import cache
from pathlib import Path

import grimp
import pytest
from packaging.requirements import Requirement

from llmpulse.bench.extras import EXTRA_OF_MODULE
from llmpulse.cli import BENCHES
from llmpulse.harness import child_env

ROOT = Path(__file__).resolve().parents[2]
OWN = ("llmpulse", "streams", "detectors", "retrain", "dashboards")


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def extras() -> dict[str, list[str]]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                ["optional-dependencies"])


def requirements_of(extra: str) -> list[Requirement]:
    """The requirements of ``llmpulse[extra]``, nested extras expanded."""
    out: list[Requirement] = []
    for text in extras()[extra]:
        req = Requirement(text)
        if canon(req.name) == "llmpulse":
            for inner in sorted(req.extras):
                out += requirements_of(inner)
        else:
            out.append(req)
    return out


def installed_by_all() -> frozenset[str]:
    """The distributions ``pip install 'llmpulse[all]'`` installs (as installed here)."""
    return installed_by("all")


@cache
def installed_by(extra: str) -> frozenset[str]:
    """The distributions ``pip install 'llmpulse[extra]'`` installs (as installed here)."""
    base = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())
            ["project"]["dependencies"]]
    todo = base + requirements_of(extra)
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = {"llmpulse"}
    while todo:
        req = todo.pop()
        key = (canon(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue
        for text in dist.requires or []:
            sub = Requirement(text)
            envs = [{"extra": e} for e in sorted(req.extras) or [""]]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append(sub)
    return frozenset(names)


@cache
def file_owners() -> dict[str, str]:
    """Installed file -> the distribution that installed it."""
    out: dict[str, str] = {}
    for dist in md.distributions():
        name = canon(dist.metadata["Name"] or "")
        for f in dist.files or ():
            if f.suffix in (".py", ".so", ".pyd"):
                out[os.path.normpath(str(dist.locate_file(f)))] = name
    return out


def _locate(name: str, paths: list[str]) -> tuple[str | None, list[str] | None] | None:
    """(file, package search path) of ``name`` on ``paths``, as the path finder
    would find it (a regular package or module first, else a namespace package)."""
    namespace = []
    for base in paths:
        b = Path(base or ".")
        if (b / name / "__init__.py").is_file():
            return str(b / name / "__init__.py"), [str(b / name)]
        for suffix in importlib.machinery.all_suffixes():
            if (b / (name + suffix)).is_file():
                return str(b / (name + suffix)), None
        if (b / name).is_dir():
            namespace.append(str(b / name))
    return (None, namespace) if namespace else None


def providers(module: str) -> list[str] | None:
    """The distributions whose files a module and its parent packages come from,
    found without importing anything; None when it cannot be found."""
    path: list[str] | None = list(sys.path)
    owners: list[str] = []
    origin: str | None = None
    for part in module.split("."):
        if path is None:
            break  # a module, not a package: the rest are attributes
        found = _locate(part, path)
        if found is None:
            return None
        origin, path = found
        owner = file_owners().get(os.path.normpath(origin)) if origin else None
        if owner:
            owners.append(owner)
    if origin is None and path:  # a namespace package: whoever installed files in it
        inside = tuple(os.path.normpath(d) + os.sep for d in path)
        owners += sorted({o for f, o in file_owners().items() if f.startswith(inside)})
    return owners


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside ``try: ... except ImportError`` (an optional import by design)."""
    while node in parents:
        child, node = node, parents[node]
        if isinstance(node, ast.Try) and child in node.body:
            for h in node.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
                if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError",
                                                            "Exception") for n in names):
                    return True
    return False


def external_imports(module: str) -> set[str]:
    """Modules outside the repository and the standard library that ``module`` and
    everything of the repository it imports (at any depth, in functions too) import
    unconditionally."""
    graph = _graph()
    out: set[str] = set()
    for mod in {module} | graph.find_upstream_modules(module):
        if not mod.startswith(OWN):
            continue
        spec = importlib.util.find_spec(mod)
        assert spec is not None and spec.origin, mod
        tree = ast.parse(Path(spec.origin).read_text())
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            if _guarded(node, parents) or _type_checking_only(node, parents):
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OWN + ("tests",):
                    out.add(name)
    return out


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


@cache
def _graph() -> grimp.ImportGraph:
    return grimp.build_graph(*OWN)


def test_the_extras_table_follows_pyproject() -> None:
    for module, extra in EXTRA_OF_MODULE.items():
        owners = providers(module)
        assert owners, f"{module}: not installed here"
        assert owners[-1] in installed_by(extra), (module, extra, owners[-1])
        assert owners[-1] not in installed_by("redact") or extra == "redact", (module, extra)


@pytest.mark.parametrize("name", BENCHES)
def test_each_benchmark_imports_only_what_llmpulse_all_installs(name: str) -> None:
    allowed = installed_by_all()
    problems = {}
    for mod in sorted(external_imports(f"llmpulse.bench.{name}")):
        owners = providers(mod)
        if owners is None or any(o not in allowed for o in owners):
            problems[mod] = owners
    assert not problems, f"not installed by 'llmpulse[all]': {problems}"


SITECUSTOMIZE = textwrap.dedent('''
    """Refuse modules of distributions outside LLMPULSE_TEST_ALLOWED_DISTS, and the
    modules in LLMPULSE_TEST_BLOCKED_MODULES: a smaller install than this one."""
    import importlib.machinery, importlib.metadata as md, json, os, re, sys

    _allowed = set(json.loads(os.environ.get("LLMPULSE_TEST_ALLOWED_DISTS", "null")) or ())
    _blocked = tuple(json.loads(os.environ.get("LLMPULSE_TEST_BLOCKED_MODULES", "[]")))
    _owner = {}
    if _allowed:
        for _d in md.distributions():
            _n = re.sub(r"[-_.]+", "-", _d.metadata["Name"] or "").lower()
            if _n not in _allowed:
                for _f in _d.files or ():
                    if _f.suffix in (".py", ".so"):
                        _owner[os.path.normpath(str(_d.locate_file(_f)))] = _n

    class _SmallerInstall:
        def find_spec(self, name, path=None, target=None):
            if name.startswith(_blocked) and any(name == b or name.startswith(b + ".")
                                                 for b in _blocked):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            if not _owner:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and spec.origin and os.path.normpath(spec.origin) in _owner:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _SmallerInstall())
''')


def _cli(tmp_path: Path, *args: str, allowed: frozenset[str] | None = None,
         blocked: tuple[str, ...] = (), timeout: float = 300) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = child_env(tmp_path / "data", {
        "LLMPULSE_TEST_ALLOWED_DISTS": json.dumps(sorted(allowed) if allowed else None),
        "LLMPULSE_TEST_BLOCKED_MODULES": json.dumps(list(blocked)),
        "HF_HUB_OFFLINE": "1"})
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    return subprocess.run([sys.executable, "-m", "llmpulse.cli", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)


def test_the_blocker_refuses_what_llmpulse_all_does_not_install(tmp_path: Path) -> None:
    allowed = installed_by_all()
    assert "opentelemetry-sdk" in allowed and "pytest" not in allowed
    r = _cli(tmp_path, "--help", allowed=allowed - {"opentelemetry-sdk"})
    assert r.returncode == 0, r.stderr
    site = tmp_path / "site"
    probe = subprocess.run(
        [sys.executable, "-c", "import opentelemetry.proto\ntry:\n import pytest\nexcept "
         "ModuleNotFoundError:\n print('refused')"],
        env={**child_env(tmp_path), "PYTHONPATH": str(site) + os.pathsep + str(ROOT),
             "LLMPULSE_TEST_ALLOWED_DISTS": json.dumps(sorted(allowed))},
        capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == "refused", probe.stderr


@pytest.mark.parametrize("name", BENCHES)
def test_bench_help_where_only_llmpulse_all_is_installed(name: str, tmp_path: Path) -> None:
    r = _cli(tmp_path, "bench", name, "--help", allowed=installed_by_all())
    assert r.returncode == 0 and "--quick" in r.stdout, r.stderr


def test_a_missing_optional_module_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    r = _cli(tmp_path, "bench", "shim", "--quick", blocked=("opentelemetry.sdk",))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [
        "llmpulse bench shim: needs opentelemetry.sdk, from the 'bench' extra: "
        "pip install 'llmpulse[bench]' (or 'llmpulse[all]')"], r.stderr


@pytest.mark.integration
def test_bench_shim_quick_runs_where_only_llmpulse_all_is_installed(tmp_path: Path) -> None:
    out = tmp_path / "shim.json"
    r = _cli(tmp_path, "bench", "shim", "--quick", "--json", str(out), allowed=installed_by_all())
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    res = json.loads(out.read_text())
    assert res["shim_all_delivered"] and res["otel_spans_exported"] >= res["events"]
    stored = res["stored_round"]
    assert stored["all_delivered"] and stored["events"] == res["events"]
    assert stored["stored_events_per_s"] > 0 and res["shim_end_to_end_events_per_s"] > 0
