"""
Manifest parsing and validation (contract §2.2).
"""
from __future__ import annotations

import os
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from ductile.plugins.manifest import Command, FactOutput, ManifestError, load_manifest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")


def good() -> dict[str, Any]:
    return {
        "manifest_spec": "ductile.plugin",
        "manifest_version": 1,
        "name": "demo",
        "version": "1.2.3",
        "protocol": 2,
        "entrypoint": "run.py",
        "commands": [{"name": "poll", "type": "write"}, {"name": "health", "type": "read"}],
    }


class ManifestTests(SynchronousTestCase):
    def write(self, data: Any, raw: str | None = None) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "manifest.yaml")
        with open(path, "w") as f:
            f.write(raw if raw is not None else yaml.safe_dump(data))
        return path

    def load(self, **changes: Any) -> Any:
        data = good()
        for key, value in changes.items():
            if value is _DELETE:
                del data[key]
            else:
                data[key] = value
        return load_manifest(self.write(data))

    def rejects(self, field: str, fragment: str, **changes: Any) -> ManifestError:
        data = good()
        for key, value in changes.items():
            if value is _DELETE:
                del data[key]
            else:
                data[key] = value
        path = self.write(data)
        e = self.assertRaises(ManifestError, load_manifest, path)
        self.assertEqual(e.field, field)
        self.assertEqual(e.path, os.path.abspath(path))
        self.assertIn(fragment, str(e))
        self.assertTrue(str(e).startswith(os.path.abspath(path) + ": "), str(e))
        if field:
            self.assertIn(f": {field}: ", str(e))
        return e

    def test_good_manifest(self) -> None:
        path = self.write(good())
        plugin = load_manifest(path)
        directory = os.path.dirname(os.path.abspath(path))
        self.assertEqual(plugin.name, "demo")
        self.assertEqual(plugin.version, "1.2.3")
        self.assertEqual(plugin.directory, directory)
        self.assertEqual(plugin.entrypoint, os.path.join(directory, "run.py"))
        self.assertEqual(plugin.manifest_path, os.path.abspath(path))
        self.assertEqual(list(plugin.commands), ["poll", "health"])
        self.assertEqual(plugin.commands["health"], Command(name="health", type="read"))
        self.assertTrue(plugin.concurrency_safe)
        self.assertEqual(plugin.config_keys_required, ())
        self.assertTrue(plugin.supports("poll"))
        self.assertFalse(plugin.supports("handle"))

    def test_fixture_manifests(self) -> None:
        """The checked-in test plugins use both command forms."""
        py = load_manifest(os.path.join(FIXTURES, "echo-py", "manifest.yaml"))
        self.assertEqual(list(py.commands), ["poll", "handle", "health"])
        self.assertTrue(py.commands["handle"].idempotent)
        self.assertTrue(py.commands["health"].retry_safe)
        self.assertFalse(py.concurrency_safe)
        self.assertEqual(py.config_keys_optional, ("greeting",))
        sh = load_manifest(os.path.join(FIXTURES, "echo-sh", "manifest.yaml"))
        self.assertEqual(list(sh.commands), ["poll", "health"])
        self.assertEqual(sh.commands["health"].type, "read")

    def test_version_kept_as_written(self) -> None:
        """C{version: 1.10} is the text 1.10, not the float 1.1."""
        path = self.write(None, raw=yaml.safe_dump(good()).replace("1.2.3", "1.10"))
        self.assertEqual(load_manifest(path).version, "1.10")

    def test_command_map_form(self) -> None:
        plugin = self.load(
            commands={"poll": {"type": "read", "description": "d"}, "handle": None}
        )
        self.assertEqual(
            plugin.commands["poll"], Command(name="poll", type="read", description="d")
        )
        self.assertEqual(plugin.commands["handle"], Command(name="handle", type="write"))

    def test_command_type_defaults_to_write(self) -> None:
        plugin = self.load(commands=[{"name": "poll"}])
        self.assertEqual(plugin.commands["poll"].type, "write")

    def test_optional_fields(self) -> None:
        plugin = self.load(
            description="about",
            concurrency_safe=False,
            config_keys={"required": ["token"], "optional": ["x"]},
            fact_outputs=[
                {"when": {"command": "poll"}, "from": "state_updates", "fact_type": "demo.f"}
            ],
            commands=[{"name": "poll", "idempotent": True, "retry_safe": True}],
        )
        self.assertEqual(plugin.description, "about")
        self.assertFalse(plugin.concurrency_safe)
        self.assertEqual(plugin.config_keys_required, ("token",))
        self.assertEqual(plugin.config_keys_optional, ("x",))
        self.assertEqual(plugin.fact_outputs_for("poll"), (FactOutput("poll", "demo.f"),))
        self.assertTrue(plugin.commands["poll"].idempotent)
        self.assertTrue(plugin.commands["poll"].retry_safe)

    def test_unknown_fields_ignored(self) -> None:
        """Fields this runtime does not use (stopwatch, schemas) do not stop loading."""
        plugin = self.load(stopwatch={"max_subs": 4})
        self.assertEqual(plugin.name, "demo")

    def test_missing_required_fields(self) -> None:
        for key in ("manifest_spec", "manifest_version", "name", "version", "protocol",
                    "entrypoint"):
            self.rejects(key, "is required", **{key: _DELETE})
        self.rejects("name", "is required", name="  ")

    def test_wrong_spec(self) -> None:
        self.rejects("manifest_spec", "unsupported value 'other'", manifest_spec="other")

    def test_wrong_manifest_version(self) -> None:
        self.rejects("manifest_version", "unsupported value 2 (supported: 1)", manifest_version=2)
        self.rejects("manifest_version", "unsupported value '1'", manifest_version="1")

    def test_wrong_protocol(self) -> None:
        self.rejects("protocol", "unsupported protocol 1 (supported: 2)", protocol=1)
        self.rejects("protocol", "unsupported protocol True", protocol=True)

    def test_entrypoint_traversal(self) -> None:
        self.rejects("entrypoint", "contains path traversal: ../x/run.py", entrypoint="../x/run.py")

    def test_entrypoint_absolute(self) -> None:
        self.rejects("entrypoint", "must be relative to the plugin directory", entrypoint="/bin/sh")

    def test_no_commands(self) -> None:
        self.rejects("commands", "at least one command must be declared", commands=[])
        self.rejects("commands", "at least one command must be declared", commands=_DELETE)
        self.rejects("commands", "must be a list of objects or a map", commands="poll")

    def test_bad_command_name(self) -> None:
        for name in ("1poll", "po ll", "_x", "a.b"):
            self.rejects(
                "commands[0].name", f"invalid command {name!r} (must start with a letter",
                commands=[{"name": name}],
            )
        self.rejects("commands[0].name", "is required", commands=[{"type": "read"}])
        self.rejects("commands.1x.name", "invalid command '1x'", commands={"1x": {}})

    def test_bad_command_type(self) -> None:
        self.rejects(
            "commands[1].type", "invalid command type 'exec' for 'b' (valid: read, write)",
            commands=[{"name": "a"}, {"name": "b", "type": "exec"}],
        )

    def test_command_entry_not_object(self) -> None:
        self.rejects("commands[0]", "must be an object", commands=["poll"])
        self.rejects("commands.poll", "must be an object", commands={"poll": "read"})

    def test_duplicate_command(self) -> None:
        self.rejects(
            "commands[1].name", "duplicate command 'poll'",
            commands=[{"name": "poll"}, {"name": "poll"}],
        )

    def test_bad_flags(self) -> None:
        self.rejects("concurrency_safe", "must be true or false, got 'no'", concurrency_safe="no")
        self.rejects(
            "commands[0].idempotent", "must be true or false",
            commands=[{"name": "poll", "idempotent": "yes"}],
        )

    def test_bad_config_keys(self) -> None:
        self.rejects("config_keys", "must be a mapping", config_keys=["a"])
        self.rejects(
            "config_keys.required", "must be a list of key names", config_keys={"required": "a"}
        )

    def test_bad_fact_outputs(self) -> None:
        self.rejects(
            "fact_outputs[0].when.command", "'nope' is not declared in commands",
            fact_outputs=[{"when": {"command": "nope"}, "from": "state_updates", "fact_type": "t"}],
        )
        self.rejects(
            "fact_outputs[0].from", "unsupported value 'result'",
            fact_outputs=[{"when": {"command": "poll"}, "from": "result", "fact_type": "t"}],
        )
        self.rejects(
            "fact_outputs[0].fact_type", "is required",
            fact_outputs=[{"when": {"command": "poll"}, "from": "state_updates"}],
        )

    def test_not_a_mapping(self) -> None:
        path = self.write(None, raw="- a\n- b\n")
        e = self.assertRaises(ManifestError, load_manifest, path)
        self.assertIn("manifest must be a YAML mapping", str(e))
        self.assertIn(path, str(e))

    def test_invalid_yaml(self) -> None:
        path = self.write(None, raw="name: [unclosed\n")
        e = self.assertRaises(ManifestError, load_manifest, path)
        self.assertIn("invalid YAML", str(e))

    def test_unreadable(self) -> None:
        path = os.path.abspath(self.mktemp())
        e = self.assertRaises(ManifestError, load_manifest, path)
        self.assertIn(f"{path}: cannot read manifest", str(e))


_DELETE = object()
