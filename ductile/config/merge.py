"""
Merging the parsed files into one tree, remembering where each value came
from so that messages can name the file.

Rules (contract §5.3, with every field merged): lists at L{APPEND_PATHS}
are appended; a C{plugins} entry replaces the earlier entry of the same
name as a whole; mappings merge key by key; any other value present in a
later file replaces the earlier one.  A C{null} value never replaces one.
"""
from __future__ import annotations

from typing import Any, Iterable

import attrs

from ductile.config.report import Report
from ductile.config.sources import SourceFile

APPEND_PATHS = frozenset(
    {
        ("plugin_roots",),
        ("api", "auth", "tokens"),
        ("instances",),
        ("remote_ingress", "peers"),
        ("pipelines",),
        ("tokens",),
        ("routes",),
        ("webhooks", "endpoints"),
    }
)
REPLACE_ENTRY_PATHS = frozenset({("plugins",)})
#: Read per file by the source reader, never merged.
PER_FILE_KEYS = frozenset({"include", "environment_vars"})


@attrs.frozen
class Located:
    """An entry of an appended list, with its file and index in that file."""

    value: Any
    file: str
    index: int


@attrs.define
class Merged:
    """The merged tree and the file that set each key path."""

    tree: dict[str, Any] = attrs.field(factory=dict)
    origins: dict[tuple[str, ...], str] = attrs.field(factory=dict)

    def file_of(self, path: Iterable[str]) -> str:
        """The file that set C{path}, or the nearest enclosing key's file."""
        p = tuple(path)
        while p:
            if p in self.origins:
                return self.origins[p]
            p = p[:-1]
        return self.origins.get((), "")


def merge_sources(sources: list[SourceFile], report: Report) -> Merged:
    merged = Merged()
    if sources:
        merged.origins[()] = sources[0].path
    for source in sources:
        data = {k: v for k, v in source.data.items() if k not in PER_FILE_KEYS}
        _merge(merged, merged.tree, data, (), source.path, report)
    return merged


def _merge(
    merged: Merged,
    dst: dict[str, Any],
    src: dict[str, Any],
    path: tuple[str, ...],
    file: str,
    report: Report,
) -> None:
    for key, value in src.items():
        key = str(key)
        p = path + (key,)
        if value is None:
            if key not in dst:
                dst[key] = None
                merged.origins[p] = file
            continue
        if p in APPEND_PATHS:
            if not isinstance(value, list):
                report.invalid(file, ".".join(p), value, "expected a list")
                continue
            existing = dst.get(key)
            if not isinstance(existing, list):
                existing = dst[key] = []
                merged.origins[p] = file
            existing.extend(Located(item, file, i) for i, item in enumerate(value))
            continue
        if p in REPLACE_ENTRY_PATHS and isinstance(value, dict):
            existing = dst.get(key)
            if not isinstance(existing, dict):
                existing = dst[key] = {}
                merged.origins[p] = file
            for name, entry in value.items():
                existing[str(name)] = entry
                merged.origins[p + (str(name),)] = file
            continue
        if isinstance(value, dict):
            existing = dst.get(key)
            if not isinstance(existing, dict):
                existing = dst[key] = {}
                merged.origins[p] = file
            _merge(merged, existing, value, p, file, report)
            continue
        dst[key] = value
        merged.origins[p] = file
