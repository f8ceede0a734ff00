"""
The one exception the config loader raises.
"""
from __future__ import annotations

from typing import Iterable


class ConfigError(Exception):
    """
    The configuration cannot be loaded.

    C{problems} lists every problem found (the loader keeps going after the
    first one where it can); C{warnings} carries the warnings gathered before
    the load was refused.  C{str()} is the operator-readable message.  No
    message ever contains a secret value.
    """

    def __init__(self, problems: Iterable[str] | str, warnings: Iterable[str] = ()) -> None:
        if isinstance(problems, str):
            problems = [problems]
        self.problems: tuple[str, ...] = tuple(problems)
        self.warnings: tuple[str, ...] = tuple(warnings)
        super().__init__(self._message())

    def _message(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        lines = [f"{len(self.problems)} config errors:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._message()
