"""
A YAML loader that reads booleans the way Go's yaml.v3 does.

PyYAML follows YAML 1.1, where C{on}, C{off}, C{yes} and C{no} are booleans;
a pipeline's C{on: backup.ready} key would become C{True}.  This loader
resolves only C{true}/C{false} as booleans and drops sexagesimal numbers
(YAML 1.2 core schema, as yaml.v3 does).
"""
from __future__ import annotations

import re
from typing import Any

import yaml


class DuctileYamlLoader(yaml.SafeLoader):
    """
    C{yaml.SafeLoader} with YAML 1.2 scalars and, as in yaml.v3, a mapping
    key repeated in one mapping is an error rather than a silent override.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable: reported by the base class
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"mapping key {key!r} is already defined",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


_REPLACED = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
DuctileYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# YAML 1.2 core schema: no sexagesimal numbers (``1:30`` stays a string).
DuctileYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
DuctileYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
DuctileYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


class SourcedInt(int):
    """An int that remembers its YAML text (C{0123} for a string field stays C{"0123"})."""

    source: str


class SourcedFloat(float):
    """A float that remembers its YAML text (C{1.10} stays C{"1.10"})."""

    source: str


def _sourced(cls: type, base: Any) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        value = cls(base(loader, node))
        value.source = node.value
        return value

    return construct


DuctileYamlLoader.add_constructor(
    "tag:yaml.org,2002:int", _sourced(SourcedInt, yaml.SafeLoader.construct_yaml_int)
)
DuctileYamlLoader.add_constructor(
    "tag:yaml.org,2002:float", _sourced(SourcedFloat, yaml.SafeLoader.construct_yaml_float)
)


def scalar_text(value: Any) -> str:
    """
    A scalar as the string Go's yaml.v3 would decode into a string field:
    numbers keep their written form, booleans are C{true}/C{false}.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    source = getattr(value, "source", None)
    if isinstance(source, str):
        return source
    return str(value)


def plain(value: Any) -> Any:
    """
    A deep copy of parsed YAML with plain C{int}/C{float} values, for the
    free-form maps handed to the rest of ductile (plugin config, payloads,
    pipeline specs).
    """
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def load_yaml(text: str) -> Any:
    """Parse one YAML document with L{DuctileYamlLoader}."""
    return yaml.load(text, Loader=DuctileYamlLoader)


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """A one-line description of a parse error with its line and column."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {problem}"
