"""
Collects the errors and warnings of one load, with file-and-key locations.
"""
from __future__ import annotations

import os
from typing import Any

import attrs


def show_value(value: Any, limit: int = 60) -> str:
    """A short, quoted rendering of a (non-secret) config value for messages."""
    if isinstance(value, str):
        text = '"' + value + '"'
    elif value is None:
        text = "null (empty)"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "a mapping"
    elif isinstance(value, list):
        text = "a list"
    else:
        text = repr(value)
    if len(text) > limit:
        text = text[: limit - 4] + '..."'
    return text


@attrs.define
class Report:
    """
    Errors and warnings gathered while loading, in discovery order.

    C{config_dir} is used to show files relative to the config directory,
    which keeps messages short: C{relay-instances.yaml: instances[0].timeout}.
    """

    config_dir: str
    errors: list[str] = attrs.field(factory=list)
    warnings: list[str] = attrs.field(factory=list)

    def display(self, path: str) -> str:
        """C{path} relative to the config dir when inside it, else absolute."""
        if not path:
            return ""
        try:
            rel = os.path.relpath(path, self.config_dir)
        except ValueError:
            return path
        if rel.startswith(".." + os.sep) or rel == "..":
            return path
        return rel

    def _format(self, file: str, key: str, message: str) -> str:
        where = ": ".join(part for part in (self.display(file), key) if part)
        return f"{where}: {message}" if where else message

    def error(self, file: str, key: str, message: str) -> None:
        self.errors.append(self._format(file, key, message))

    def warn(self, file: str, key: str, message: str) -> None:
        self.warnings.append(self._format(file, key, message))

    def invalid(self, file: str, key: str, value: Any, expected: str) -> None:
        """Record a bad value: C{file: key: got VALUE; expected EXPECTED}."""
        self.error(file, key, f"invalid value {show_value(value)}; {expected}")


class Silent(Report):
    """A report that forgets everything (for entries that are disabled)."""

    def error(self, file: str, key: str, message: str) -> None:
        pass

    def warn(self, file: str, key: str, message: str) -> None:
        pass
