"""
The C{.env} files named by C{environment_vars.include} (contract §5.2).

Lines are C{KEY=VALUE}; an optional C{export } prefix is allowed, C{#} starts
a comment line, and matched surrounding quotes are stripped.
"""
from __future__ import annotations

import re

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_dotenv(text: str) -> tuple[dict[str, str], list[tuple[int, str]]]:
    """
    Parse C{.env} text.

    @return: the variables, and a list of C{(line number, reason)} for lines
        that were skipped because they are not C{KEY=VALUE}.  The reasons
        never quote the line, which may hold a secret.
    """
    values: dict[str, str] = {}
    bad: list[tuple[int, str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            bad.append((lineno, "expected KEY=VALUE"))
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in ("'", '"'):
            value = value[1:-1]
        values[key] = value
    return values, bad
