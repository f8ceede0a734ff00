"""
A plugin's C{manifest.yaml}: parsing and validation (contract §2.2).

The manifest says what a plugin is called, which protocol it speaks, which
program to run and which commands it answers. L{load_manifest} turns one file
into a L{Plugin} value or raises L{ManifestError} naming the file and the
field at fault. Trust checks on the file system (executable bit, symlinks,
world-writable directories) belong to L{ductile.plugins.discovery}; this
module only reads YAML.
"""
from __future__ import annotations

import os
import re
from types import MappingProxyType
from typing import Any, Mapping

import attrs
import yaml

#: The only C{manifest_spec} understood.
MANIFEST_SPEC = "ductile.plugin"
#: The only C{manifest_version} understood.
MANIFEST_VERSION = 1
#: The only plugin protocol spoken (stdin/stdout JSON, contract §2.4-2.5).
PROTOCOL = 2

#: Command names: a letter, then letters, digits, C{_} or C{-}.
COMMAND_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
COMMAND_TYPES = ("read", "write")


class ManifestError(ValueError):
    """
    A manifest that cannot be loaded.

    @ivar path: the manifest file.
    @ivar field: the dotted field at fault (C{commands[1].type}), or C{""}
        when the file as a whole is wrong.
    """

    def __init__(self, path: str, field: str, message: str) -> None:
        self.path = path
        self.field = field
        self.reason = message
        where = f"{path}: {field}: " if field else f"{path}: "
        super().__init__(where + message)


@attrs.frozen
class Command:
    """One command a plugin declares (C{poll}, C{handle}, C{health}, ...)."""

    name: str
    type: str = "write"
    description: str = ""
    idempotent: bool = False
    retry_safe: bool = False


@attrs.frozen
class FactOutput:
    """
    A C{fact_outputs} rule: after C{when_command} succeeds its
    C{state_updates} become a fact of C{fact_type} and replace the plugin
    state wholesale (C{compatibility_view: mirror_object}).
    """

    when_command: str
    fact_type: str
    source: str = "state_updates"
    compatibility_view: str = "mirror_object"


@attrs.frozen
class Plugin:
    """
    A loaded plugin.

    @ivar directory: absolute path of the directory holding the manifest.
    @ivar entrypoint: absolute path of the program to run (not yet
        trust-checked when it comes from L{load_manifest} alone).
    @ivar commands: declared commands keyed by name, in manifest order.
    """

    name: str
    version: str
    directory: str
    entrypoint: str
    commands: Mapping[str, Command]
    concurrency_safe: bool = True
    description: str = ""
    config_keys_required: tuple[str, ...] = ()
    config_keys_optional: tuple[str, ...] = ()
    fact_outputs: tuple[FactOutput, ...] = ()
    manifest_path: str = ""

    def supports(self, command: str) -> bool:
        """Whether the manifest declares C{command}."""
        return command in self.commands

    def fact_outputs_for(self, command: str) -> tuple[FactOutput, ...]:
        """The C{fact_outputs} rules that apply after C{command}."""
        return tuple(r for r in self.fact_outputs if r.when_command == command)


def load_manifest(path: str) -> Plugin:
    """
    Read and validate one C{manifest.yaml}.

    @raise ManifestError: the file cannot be read, is not YAML, or a field is
        missing or wrong; the message names the file and the field.
    """
    path = os.path.abspath(path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(path, "", f"cannot read manifest: {e}") from None
    return parse_manifest(text, path)


def parse_manifest(text: str, path: str) -> Plugin:
    """
    Validate manifest C{text} as if read from C{path} (which fixes the plugin
    directory and appears in every error).
    """
    path = os.path.abspath(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ManifestError(path, "", f"invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ManifestError(path, "", "manifest must be a YAML mapping")
    return _Parser(path, text, data).plugin()


class _Parser:
    def __init__(self, path: str, text: str, data: dict[str, Any]) -> None:
        self.path = path
        self.text = text
        self.data = data

    def fail(self, field: str, message: str) -> ManifestError:
        return ManifestError(self.path, field, message)

    def required(self, key: str) -> Any:
        value = self.data.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise self.fail(key, "is required")
        return value

    def plugin(self) -> Plugin:
        spec = self.required("manifest_spec")
        if spec != MANIFEST_SPEC:
            raise self.fail(
                "manifest_spec", f"unsupported value {spec!r} (supported: {MANIFEST_SPEC!r})"
            )
        mversion = self.required("manifest_version")
        if not _is_int(mversion) or mversion != MANIFEST_VERSION:
            raise self.fail(
                "manifest_version",
                f"unsupported value {mversion!r} (supported: {MANIFEST_VERSION})",
            )
        name = self.required("name")
        if not isinstance(name, str):
            raise self.fail("name", f"must be a string, got {name!r}")
        name = name.strip()
        version = self._version()
        protocol = self.required("protocol")
        if not _is_int(protocol) or protocol != PROTOCOL:
            raise self.fail(
                "protocol", f"unsupported protocol {protocol!r} (supported: {PROTOCOL})"
            )
        entrypoint = self._entrypoint()
        commands = self._commands()
        directory = os.path.dirname(self.path)
        required, optional = self._config_keys()
        return Plugin(
            name=name,
            version=version,
            directory=directory,
            entrypoint=os.path.normpath(os.path.join(directory, entrypoint)),
            commands=MappingProxyType(commands),
            concurrency_safe=self._bool(self.data, "concurrency_safe", True, "concurrency_safe"),
            description=self._str(self.data, "description", "description"),
            config_keys_required=required,
            config_keys_optional=optional,
            fact_outputs=self._fact_outputs(commands),
            manifest_path=self.path,
        )

    def _version(self) -> str:
        value = self.required("version")
        if isinstance(value, str):
            return value.strip()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # `version: 1.10` must stay "1.10", not become 1.1: take the
            # scalar as written.
            return _raw_scalar(self.text, "version") or str(value)
        raise self.fail("version", f"must be a string, got {value!r}")

    def _entrypoint(self) -> str:
        value = self.required("entrypoint")
        if not isinstance(value, str):
            raise self.fail("entrypoint", f"must be a string, got {value!r}")
        if ".." in value:
            raise self.fail("entrypoint", f"contains path traversal: {value}")
        if os.path.isabs(value):
            raise self.fail(
                "entrypoint", f"must be relative to the plugin directory, got {value}"
            )
        return value

    def _commands(self) -> dict[str, Command]:
        raw = self.data.get("commands")
        if raw is None or raw == [] or raw == {}:
            raise self.fail("commands", "at least one command must be declared")
        items: list[tuple[str, Any]] = []
        if isinstance(raw, list):
            for i, entry in enumerate(raw):
                field = f"commands[{i}]"
                if not isinstance(entry, dict):
                    raise self.fail(field, "must be an object with name and type")
                cname = entry.get("name")
                if cname is None or (isinstance(cname, str) and not cname.strip()):
                    raise self.fail(f"{field}.name", "is required")
                items.append((field, entry))
        elif isinstance(raw, dict):
            for key, entry in raw.items():
                field = f"commands.{key}"
                if entry is None:
                    entry = {}
                if not isinstance(entry, dict):
                    raise self.fail(field, "must be an object (type, description, ...)")
                if "name" in entry and entry["name"] != key:
                    raise self.fail(
                        f"{field}.name", f"{entry['name']!r} differs from the key {key!r}"
                    )
                items.append((field, {**entry, "name": key}))
        else:
            raise self.fail("commands", "must be a list of objects or a map keyed by name")

        commands: dict[str, Command] = {}
        for field, entry in items:
            command = self._command(field, entry)
            if command.name in commands:
                raise self.fail(f"{field}.name", f"duplicate command {command.name!r}")
            commands[command.name] = command
        return commands

    def _command(self, field: str, entry: dict[str, Any]) -> Command:
        name = entry["name"]
        if not isinstance(name, str) or not COMMAND_NAME.match(name.strip()):
            raise self.fail(
                f"{field}.name",
                f"invalid command {name!r} (must start with a letter and contain "
                "only letters, digits, '_' or '-')",
            )
        name = name.strip()
        ctype = entry.get("type")
        if ctype is None:
            ctype = "write"
        if ctype not in COMMAND_TYPES:
            raise self.fail(
                f"{field}.type", f"invalid command type {ctype!r} for {name!r} (valid: read, write)"
            )
        return Command(
            name=name,
            type=ctype,
            description=self._str(entry, "description", f"{field}.description"),
            idempotent=self._bool(entry, "idempotent", False, f"{field}.idempotent"),
            retry_safe=self._bool(entry, "retry_safe", False, f"{field}.retry_safe"),
        )

    def _config_keys(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        raw = self.data.get("config_keys")
        if raw is None:
            return (), ()
        if not isinstance(raw, dict):
            raise self.fail("config_keys", "must be a mapping with required/optional lists")
        out = []
        for part in ("required", "optional"):
            keys = raw.get(part) or []
            if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
                raise self.fail(f"config_keys.{part}", "must be a list of key names")
            out.append(tuple(keys))
        return out[0], out[1]

    def _fact_outputs(self, commands: Mapping[str, Command]) -> tuple[FactOutput, ...]:
        raw = self.data.get("fact_outputs")
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise self.fail("fact_outputs", "must be a list of rules")
        rules = []
        for i, rule in enumerate(raw):
            field = f"fact_outputs[{i}]"
            if not isinstance(rule, dict):
                raise self.fail(field, "must be an object")
            when = rule.get("when") or {}
            command = when.get("command") if isinstance(when, dict) else None
            if not isinstance(command, str) or not command.strip():
                raise self.fail(f"{field}.when.command", "is required")
            if command.strip() not in commands:
                raise self.fail(
                    f"{field}.when.command", f"{command!r} is not declared in commands"
                )
            source = rule.get("from")
            if not isinstance(source, str) or not source.strip():
                raise self.fail(f"{field}.from", "is required")
            if source.strip() != "state_updates":
                raise self.fail(
                    f"{field}.from", f"unsupported value {source!r} (supported: 'state_updates')"
                )
            fact_type = rule.get("fact_type")
            if not isinstance(fact_type, str) or not fact_type.strip():
                raise self.fail(f"{field}.fact_type", "is required")
            view = rule.get("compatibility_view") or "mirror_object"
            if view != "mirror_object":
                raise self.fail(
                    f"{field}.compatibility_view",
                    f"unsupported value {view!r} (supported: 'mirror_object')",
                )
            rules.append(
                FactOutput(when_command=command.strip(), fact_type=fact_type.strip())
            )
        return tuple(rules)

    def _bool(self, data: Mapping[str, Any], key: str, default: bool, field: str) -> bool:
        value = data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(field, f"must be true or false, got {value!r}")
        return value

    def _str(self, data: Mapping[str, Any], key: str, field: str) -> str:
        value = data.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, got {value!r}")
        return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _raw_scalar(text: str, key: str) -> str | None:
    """The text of top-level scalar C{key} as written in the YAML."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key and isinstance(v, yaml.ScalarNode):
            return v.value
    return None
