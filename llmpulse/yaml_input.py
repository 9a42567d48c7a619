"""YAML from a file someone else wrote (the settings, the rules), parsed with bounds.

``yaml.safe_load`` builds nothing dangerous, but two small files still take a process
down:

* an alias bomb: nine anchors, each a list of nine aliases of the one before, is under
  1 KB and parses at once (the aliases share one object), but anything that walks it
  (a validator, an error message's ``repr``) meets 9**9 values: the process hung, its
  memory growing;
* deep nesting (``[[[[...]]]]``): PyYAML's composer recurses, and a ``RecursionError``
  escaped as a traceback instead of an error naming the file.

:func:`load_yaml` parses as ``safe_load`` does, then counts the values the document
holds with every alias expanded (in time linear in the distinct values: each is counted
once, its expansion remembered), and refuses a document past :data:`MAX_VALUES` values,
one that contains itself through an alias, or one nested past :data:`MAX_DEPTH`
levels, with a :class:`YamlInputError` that says which. Anchors and aliases within
those bounds stay allowed (they are how a long rules file repeats a block).

>>> load_yaml("a: &x [1, 2]\\nb: *x")
{'a': [1, 2], 'b': [1, 2]}
>>> bomb = "a: &a [x, x, x, x, x, x, x, x, x]\\n" + "".join(
...     f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\\n" for p, c in zip("abcdefgh", "bcdefghi"))
>>> load_yaml(bomb)
Traceback (most recent call last):
...
llmpulse.yaml_input.YamlInputError: its anchors and aliases expand to more than 100,000 values
>>> load_yaml("a: &a [1, *a]")
Traceback (most recent call last):
...
llmpulse.yaml_input.YamlInputError: an alias refers to a value that contains it
>>> load_yaml("[" * 5000 + "]" * 5000)
Traceback (most recent call last):
...
llmpulse.yaml_input.YamlInputError: nested more than 100 levels deep
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["MAX_DEPTH", "MAX_VALUES", "YamlInputError", "load_yaml"]

MAX_VALUES = 100_000
"""Values (scalars, lists, mappings; keys too) a document may hold with its aliases
expanded. The shipped rules file holds about 600."""

MAX_DEPTH = 100
"""Levels of nesting a document may have."""


class YamlInputError(ValueError):
    """A YAML document refused: not valid YAML, or past the bounds of :func:`load_yaml`."""


def load_yaml(text: str) -> Any:
    """``text`` parsed as ``yaml.safe_load`` does, within :data:`MAX_VALUES` and
    :data:`MAX_DEPTH` (see the module docstring); :class:`YamlInputError` otherwise."""
    try:
        # the parser is a state machine (no recursion): the depth is known from its
        # events before the composer, which recurses once per level, runs
        _check_depth(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlInputError(f"not valid YAML{where}: {problem}") from None
    _count(data, {}, set(), 0)
    return data


def _check_depth(text: str) -> None:
    """Raises past :data:`MAX_DEPTH` levels of lists and mappings, by the parser's events.

    >>> _check_depth("a: [1, {b: [2]}]")
    >>> _check_depth("a: '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[['"
    ...              "'[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[['")
    """
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise YamlInputError(f"nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def _count(value: Any, sizes: dict[int, int], open_: set[int], depth: int) -> int:
    """Values in ``value`` with aliases expanded; raises past the bounds. ``sizes``
    remembers each container's count (an alias is the same object: counted once,
    added as often as it appears); ``open_`` holds the containers being counted."""
    if not isinstance(value, (list, dict)):
        return 1
    key = id(value)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise YamlInputError("an alias refers to a value that contains it")
    if depth >= MAX_DEPTH:
        raise YamlInputError(f"nested more than {MAX_DEPTH} levels deep")
    open_.add(key)
    items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
    total = 1
    for k, v in items:
        total += _count(v, sizes, open_, depth + 1) + (k is not None)
        if total > MAX_VALUES:
            raise YamlInputError(f"its anchors and aliases expand to more than {MAX_VALUES:,} values")
    open_.discard(key)
    sizes[key] = total
    return total
