"""
Copying JSON values (what payloads, contexts and baggage are made of).

C{copy.deepcopy} keeps a memo and dispatches through its type table for
every leaf, which the router paid several times per routed event; JSON
values are trees of dicts and lists over immutable scalars, so a copy needs
only to rebuild the containers.
"""
from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def copy_json(value: T) -> T:
    """
    A copy of C{value} that shares no dict or list with it.  Anything that
    is not a dict or list is returned as is: JSON scalars are immutable.
    Tuples (which only appear in values built in Python) become lists, as
    they would through a JSON round trip.
    """
    kind = type(value)
    if kind is dict:
        return {k: copy_json(v) for k, v in value.items()}  # type: ignore[attr-defined,return-value]
    if kind is list or kind is tuple:
        return [copy_json(v) for v in value]  # type: ignore[attr-defined,return-value]
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, (list, tuple)):
        return [copy_json(v) for v in value]  # type: ignore[return-value]
    return value
