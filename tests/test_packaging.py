"""The wheel: one top-level package, ``llmpulse``, with the four folders inside it.

``pip install llmpulse`` (the client shim) must not put generic names such as
``streams`` or ``detectors`` into site-packages; the repository keeps its
top-level folders and the wheel maps them under the ``llmpulse`` namespace.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _wheel(tmp_path: Path) -> zipfile.ZipFile:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    [whl] = tmp_path.glob("llmpulse-*.whl")
    return zipfile.ZipFile(whl)


def test_the_wheel_installs_only_the_llmpulse_package(tmp_path: Path) -> None:
    names = _wheel(tmp_path).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"llmpulse"}, tops
    for folder in ("streams", "detectors", "retrain", "dashboards"):
        assert f"llmpulse/{folder}/__init__.py" in names, folder
    assert "llmpulse/py.typed" in names
    assert "llmpulse/streams/app.py" in names and "llmpulse/monitor.py" in names
    # the data the folders read at run time travels with them
    assert "llmpulse/detectors/hallucination/data/grounding_model.json" in names
    assert "llmpulse/retrain/reference_tickets.jsonl" in names


def test_the_folders_are_imported_under_the_llmpulse_namespace_only() -> None:
    import llmpulse.streams.app as app

    assert Path(app.__file__).resolve() == (ROOT / "streams" / "app.py").resolve()
    # nothing in the repository imports the folders by their bare names
    bare = []
    for path in ROOT.glob("*/**/*.py"):
        if ".venv" in path.parts or "build" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            bare += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                     if n.split(".")[0] in ("streams", "detectors", "retrain", "dashboards")]
    assert not bare, bare[:5]
