"""
Reading the config files: the C{include} graph, C{.env} files and C{${VAR}}.

The root file comes first; each C{include} entry (a file, or a directory
meaning its C{*.yaml} files, alphabetically, non-recursively) is read in
list order, relative to the including file, and an included file's own
includes follow right after it (depth-first).  A file that includes itself,
directly or not, is refused with the chain in the message.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Mapping

import attrs
import yaml

from ductile.config.dotenv import parse_dotenv
from ductile.config.interpolate import interpolate
from ductile.config.report import Report, show_value
from ductile.config.yamlsafe import describe_yaml_error, load_yaml


@attrs.frozen
class SourceFile:
    """One parsed config file: its absolute path and top-level mapping."""

    path: str
    data: Mapping[str, Any]


class EnvLookup(Mapping[str, str]):
    """
    Variables for C{${VAR}}: the process environment first, then the values
    read from C{.env} files, which never override it.  Nothing is written
    to C{os.environ}.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._dotenv: dict[str, str] = {}

    def add_dotenv(self, values: Mapping[str, str]) -> bool:
        """Add C{.env} values not already known; C{True} if any was new."""
        added = False
        for key, value in values.items():
            if key not in self._environ and key not in self._dotenv:
                self._dotenv[key] = value
                added = True
        return added

    def __getitem__(self, key: str) -> str:
        if key in self._environ:
            return self._environ[key]
        return self._dotenv[key]

    def __contains__(self, key: object) -> bool:
        return key in self._environ or key in self._dotenv

    def __iter__(self) -> Iterator[str]:
        seen = set(self._environ)
        yield from self._environ
        yield from (k for k in self._dotenv if k not in seen)

    def __len__(self) -> int:
        return len(set(self._environ) | set(self._dotenv))


def read_sources(root: str, lookup: EnvLookup, report: Report) -> list[SourceFile]:
    """
    Read C{root} and everything it includes, in merge order.

    Problems go to C{report}; a file that cannot be read or parsed is
    left out and the rest is still read, so one run reports them all.
    """
    out: list[SourceFile] = []
    visited: set[str] = set()
    _visit(os.path.abspath(root), [], "", "", out, visited, lookup, report)
    return out


def _visit(
    path: str,
    stack: list[str],
    parent: str,
    parent_key: str,
    out: list[SourceFile],
    visited: set[str],
    lookup: EnvLookup,
    report: Report,
) -> None:
    real = os.path.normpath(os.path.abspath(path))
    if real in stack:
        chain = " -> ".join(report.display(p) for p in stack[stack.index(real):] + [real])
        report.error(parent, parent_key, f"circular dependency detected: {chain}")
        return
    if real in visited:
        report.warn(parent, parent_key, f"{report.display(path)} is already included; ignored")
        return
    visited.add(real)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        reason = e.strerror or str(e)
        if parent:
            report.error(parent, parent_key, f"cannot read included file {path}: {reason}")
        else:
            report.error("", "", f"cannot read config file {path}: {reason}")
        return
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        report.error(path, "", "not UTF-8 text")
        return

    data = _parse(path, text, lookup, report)
    if data is None:
        return
    if _load_env_files(path, data, lookup, report):
        # New variables from .env: interpolate again with them.
        data = _parse(path, text, lookup, report)
        if data is None:
            return
    out.append(SourceFile(path=path, data=data))

    includes = data.get("include")
    if includes is None:
        return
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list):
        report.invalid(path, "include", includes, "expected a list of files or directories")
        return
    for i, entry in enumerate(includes):
        key = f"include[{i}]"
        if not isinstance(entry, str) or not entry.strip():
            report.invalid(path, key, entry, "expected a file or directory path")
            continue
        target = _resolve(path, entry.strip())
        if os.path.isdir(target):
            names = sorted(n for n in os.listdir(target) if n.endswith(".yaml"))
            for name in names:
                child = os.path.join(target, name)
                if os.path.isfile(child):
                    _visit(child, stack + [real], path, key, out, visited, lookup, report)
        else:
            _visit(target, stack + [real], path, key, out, visited, lookup, report)


def _resolve(declaring_file: str, entry: str) -> str:
    entry = os.path.expanduser(entry)
    if os.path.isabs(entry):
        return os.path.normpath(entry)
    return os.path.normpath(os.path.join(os.path.dirname(declaring_file), entry))


def _parse(path: str, text: str, lookup: EnvLookup, report: Report) -> dict[str, Any] | None:
    try:
        data = load_yaml(interpolate(text, lookup))
    except yaml.YAMLError as e:
        report.error(path, "", describe_yaml_error(e))
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        report.error(path, "", f"the top level must be a mapping of keys, not {show_value(data)}")
        return None
    bad = [k for k in data if not isinstance(k, str)]
    for k in bad:
        report.error(path, "", f"top-level key {show_value(k)} is not a string")
    if bad:
        return None
    return data


def _load_env_files(path: str, data: Mapping[str, Any], lookup: EnvLookup, report: Report) -> bool:
    section = data.get("environment_vars")
    if section is None:
        return False
    if not isinstance(section, dict):
        report.invalid(path, "environment_vars", section, "expected a mapping with include: [files]")
        return False
    files = section.get("include")
    if files is None:
        return False
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list):
        report.invalid(path, "environment_vars.include", files, "expected a list of .env files")
        return False
    added = False
    for i, entry in enumerate(files):
        key = f"environment_vars.include[{i}]"
        if not isinstance(entry, str) or not entry.strip():
            report.invalid(path, key, entry, "expected a .env file path")
            continue
        target = _resolve(path, entry.strip())
        try:
            with open(target, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            report.warn(path, key, f"cannot read .env file {target}: {reason}; skipped")
            continue
        values, bad = parse_dotenv(text)
        for lineno, reason in bad:
            report.warn(target, f"line {lineno}", f"{reason}; line skipped")
        added = lookup.add_dotenv(values) or added
    return added
