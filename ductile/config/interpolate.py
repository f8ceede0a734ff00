"""
C{${VAR}} interpolation, done on raw file text before YAML parsing.

An undefined variable stays as the literal C{${VAR}} text; it is only an
error where the value is used (contract §5.4).  There is no default syntax
and no bare C{$VAR} form.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def interpolate(text: str, lookup: Mapping[str, str]) -> str:
    """Replace every C{${VAR}} whose name is in C{lookup}; leave the rest."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in lookup:
            return lookup[name]
        return match.group(0)

    return VAR_REF.sub(sub, text)


def unresolved_vars(value: Any) -> list[str]:
    """
    The names of C{${VAR}} references left in C{value} (a string, or a
    nested list/dict of them), in order of appearance, without repeats.
    """
    found: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            for name in VAR_REF.findall(v):
                if name not in found:
                    found.append(name)
        elif isinstance(v, Mapping):
            for key, item in v.items():
                walk(key)
                walk(item)
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item)

    walk(value)
    return found
