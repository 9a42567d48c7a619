"""Labelled groundedness sets: reading, checking and splitting by source document.

A set is a JSON Lines file (optionally gzipped), one record per (context,
answer) pair::

    {"context": ["passage", ...], "answer": "text", "label": 0 | 1, ...}

``label`` 1 means *not grounded*. ``response`` is accepted for ``answer`` and a
single string for ``context``. Every record is checked; a bad one raises
:class:`DatasetError` naming the file, the line and the field, and nothing is
silently dropped.

Several answers often share one source document, so splits are made by a
hash of the document (:func:`document_key`): all answers of a document fall on
the same side, and a document that appears in two sets (XSumFaith and CLIFF
share BBC articles) falls on the same side in both.

>>> import json, tempfile, os
>>> d = tempfile.mkdtemp()
>>> with open(os.path.join(d, "mine.jsonl"), "w") as f:
...     _ = f.write(json.dumps({"context": ["Fees are $5."], "answer": "Fees are $6.", "label": 1}) + "\\n")
>>> sets = load_sets(d)
>>> list(sets), sets["mine"][0]["label"], sets["mine"][0]["context"]
(['mine'], 1, ['Fees are $5.'])
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["HELD_OUT_SHARE", "DatasetError", "document_key", "held_out", "load_file", "load_sets"]

HELD_OUT_SHARE = 3
"""Documents whose key falls in the first 3 of 10 buckets are held out: never trained or tuned on."""

_MAX_LINE = 5_000_000


class DatasetError(ValueError):
    """A labelled set that cannot be read; the message names file, line and field."""


def _record(raw: str, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected an object, got {type(obj).__name__}")
    answer = obj.get("answer", obj.get("response"))
    if not isinstance(answer, str):
        raise DatasetError(f"{where}: field 'answer' must be a string")
    context = obj.get("context")
    if isinstance(context, str):
        context = [context]
    if not isinstance(context, list) or not all(isinstance(c, str) for c in context):
        raise DatasetError(f"{where}: field 'context' must be a list of strings")
    label = obj.get("label")
    if label not in (0, 1) or isinstance(label, bool):
        raise DatasetError(f"{where}: field 'label' must be 0 or 1")
    return {**obj, "answer": answer, "context": context, "label": int(label)}


def load_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of one ``.jsonl`` or ``.jsonl.gz`` file, checked."""
    p = Path(path)
    opener = gzip.open if p.name.endswith(".gz") else open
    out: list[dict[str, Any]] = []
    with opener(p, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if len(line) > _MAX_LINE:
                raise DatasetError(f"{p.name}:{n}: line longer than {_MAX_LINE} characters")
            if line.strip():
                out.append(_record(line, f"{p.name}:{n}"))
    if not out:
        raise DatasetError(f"{p.name}: no records")
    return out


def _set_name(p: Path) -> str:
    name = p.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


def load_sets(path: str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """``{set name: records}`` for a file, or for every ``*.jsonl[.gz]`` file in a directory."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.name.endswith((".jsonl", ".jsonl.gz")))
        if not files:
            raise DatasetError(f"{p}: no .jsonl or .jsonl.gz files")
    elif p.is_file():
        files = [p]
    else:
        raise DatasetError(f"{p}: no such file or directory")
    return {_set_name(f): load_file(f) for f in files}


def document_key(record: dict[str, Any]) -> str:
    """A stable key of the record's source document (its first 400 characters, case-folded).

    >>> document_key({"context": ["A B c"]}) == document_key({"context": ["a b C"]})
    True
    """
    text = " ".join(" ".join(record["context"]).lower().split())[:400]
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def held_out(record: dict[str, Any]) -> bool:
    """Whether the record's document belongs to the held-out split (about 30 %)."""
    return int(document_key(record)[:8], 16) % 10 < HELD_OUT_SHARE
