"""
Plugin discovery and trust checks (contract §2.1).
"""
from __future__ import annotations

import os
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from ductile.config.models import PluginConfig
from ductile.plugins.discovery import discover

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")


class DiscoveryTests(SynchronousTestCase):
    def root(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def plugin(
        self,
        root: str,
        subdir: str,
        name: str | None = None,
        *,
        entrypoint: str = "run.sh",
        mode: int = 0o755,
        create: bool = True,
        **manifest: Any,
    ) -> str:
        directory = os.path.join(root, subdir)
        os.makedirs(directory, exist_ok=True)
        data = {
            "manifest_spec": "ductile.plugin",
            "manifest_version": 1,
            "name": name or os.path.basename(subdir),
            "version": "1",
            "protocol": 2,
            "entrypoint": entrypoint,
            "commands": [{"name": "poll"}],
            **manifest,
        }
        with open(os.path.join(directory, "manifest.yaml"), "w") as f:
            yaml.safe_dump(data, f)
        if create:
            script = os.path.join(directory, entrypoint)
            with open(script, "w") as f:
                f.write("#!/bin/sh\necho '{\"status\":\"ok\",\"result\":\"x\"}'\n")
            os.chmod(script, mode)
        return directory

    def assertOneProblem(self, found: Any, *fragments: str) -> str:
        self.assertEqual(len(found.problems), 1, found.problems)
        for fragment in fragments:
            self.assertIn(fragment, found.problems[0])
        return found.problems[0]

    def test_fixtures_load(self) -> None:
        found = discover([FIXTURES])
        self.assertEqual(sorted(found.plugins), ["echo-py", "echo-sh"])
        self.assertEqual(found.problems, ())
        self.assertEqual(found.warnings, ())
        plugin = found.plugins["echo-sh"]
        self.assertEqual(plugin.directory, os.path.join(FIXTURES, "echo-sh"))
        self.assertEqual(plugin.entrypoint, os.path.join(FIXTURES, "echo-sh", "run.sh"))

    def test_recursive_and_identity_from_manifest(self) -> None:
        root = self.root()
        self.plugin(root, "group/deep/dir-name", name="real-name")
        found = discover([root])
        self.assertEqual(list(found.plugins), ["real-name"])
        self.assertEqual(found.problems, ())

    def test_world_writable_directory(self) -> None:
        root = self.root()
        directory = self.plugin(root, "open")
        os.chmod(directory, 0o777)
        self.plugin(root, "fine")
        found = discover([root])
        self.assertEqual(list(found.plugins), ["fine"])
        self.assertOneProblem(
            found, "plugin 'open'", "trust check failed",
            f"plugin directory is world-writable: {directory}",
        )

    def test_not_executable(self) -> None:
        root = self.root()
        directory = self.plugin(root, "noexec", mode=0o644)
        found = discover([root])
        self.assertEqual(dict(found.plugins), {})
        self.assertOneProblem(
            found, f"entrypoint is not executable: {os.path.join(directory, 'run.sh')}"
        )

    def test_entrypoint_missing(self) -> None:
        root = self.root()
        self.plugin(root, "gone", create=False)
        found = discover([root])
        self.assertOneProblem(found, "plugin 'gone'", "entrypoint not found:")

    def test_entrypoint_is_directory(self) -> None:
        root = self.root()
        directory = self.plugin(root, "dir", create=False)
        os.makedirs(os.path.join(directory, "run.sh"))
        found = discover([root])
        self.assertOneProblem(found, "entrypoint is not a regular file")

    def test_dotdot_entrypoint(self) -> None:
        root = self.root()
        directory = self.plugin(root, "escape", entrypoint="../other/run.sh", create=False)
        found = discover([root])
        self.assertEqual(dict(found.plugins), {})
        self.assertOneProblem(
            found, f"plugin in {directory} not loaded: invalid manifest",
            "entrypoint: contains path traversal: ../other/run.sh",
        )

    def test_symlink_escape_refused(self) -> None:
        root = self.root()
        outside = self.root()
        target = os.path.join(outside, "evil.sh")
        with open(target, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(target, 0o755)
        directory = self.plugin(root, "link", create=False)
        os.symlink(target, os.path.join(directory, "run.sh"))
        found = discover([root])
        self.assertEqual(dict(found.plugins), {})
        self.assertOneProblem(
            found, "symlink detected for plugin_entrypoint",
            "set service.allow_symlinks: true to allow",
        )
        # Allowing symlinks does not allow escaping the plugin root.
        found = discover([root], allow_symlinks=True)
        self.assertEqual(dict(found.plugins), {})
        self.assertOneProblem(found, f"entrypoint {target} is not under the plugin root")

    def test_symlink_to_sibling_plugin_refused(self) -> None:
        """Inside the root but outside the plugin's own directory."""
        root = self.root()
        self.plugin(root, "a")
        directory = self.plugin(root, "b", create=False)
        os.symlink(os.path.join(root, "a", "run.sh"), os.path.join(directory, "run.sh"))
        found = discover([root], allow_symlinks=True)
        self.assertEqual(list(found.plugins), ["a"])
        self.assertOneProblem(found, "is not under the plugin directory")

    def test_symlink_inside_plugin_allowed_with_warning(self) -> None:
        root = self.root()
        directory = self.plugin(root, "linked", entrypoint="real.sh")
        os.rename(os.path.join(directory, "real.sh"), os.path.join(directory, "impl.sh"))
        os.symlink("impl.sh", os.path.join(directory, "real.sh"))
        refused = discover([root])
        self.assertOneProblem(refused, "symlink detected for plugin_entrypoint")
        found = discover([root], allow_symlinks=True)
        self.assertEqual(found.problems, ())
        self.assertEqual(len(found.warnings), 1)
        self.assertIn("symlink detected for plugin_entrypoint", found.warnings[0])
        # The resolved path is what will be spawned.
        self.assertEqual(found.plugins["linked"].entrypoint, os.path.join(directory, "impl.sh"))

    def test_symlinked_root(self) -> None:
        real = self.root()
        self.plugin(real, "p")
        link = os.path.abspath(self.mktemp())
        os.symlink(real, link)
        found = discover([link])
        self.assertEqual(dict(found.plugins), {})
        self.assertOneProblem(found, f"plugin root {link} skipped", "symlink detected for plugin_root")
        found = discover([link], allow_symlinks=True)
        self.assertEqual(list(found.plugins), ["p"])
        self.assertIn("plugin_root", found.warnings[0])

    def test_duplicates_first_wins(self) -> None:
        first, second = self.root(), self.root()
        kept = self.plugin(first, "one", name="dup")
        ignored = self.plugin(second, "two", name="dup")
        found = discover([first, second])
        self.assertEqual(found.plugins["dup"].directory, kept)
        self.assertOneProblem(
            found, f"duplicate plugin 'dup' in {ignored} ignored",
            f"keeping the first, in {kept}",
        )
        # Order of roots decides.
        found = discover([second, first])
        self.assertEqual(found.plugins["dup"].directory, ignored)

    def test_duplicates_within_a_root_path_order(self) -> None:
        root = self.root()
        a = self.plugin(root, "a", name="dup")
        self.plugin(root, "b", name="dup")
        found = discover([root])
        self.assertEqual(found.plugins["dup"].directory, a)
        self.assertOneProblem(found, "duplicate plugin 'dup'")

    def test_duplicate_roots_ignored(self) -> None:
        root = self.root()
        self.plugin(root, "p")
        found = discover([root, root + "/", os.path.join(root, ".")])
        self.assertEqual(list(found.plugins), ["p"])
        self.assertEqual(found.problems, ())

    def test_missing_required_config_keys(self) -> None:
        root = self.root()
        self.plugin(root, "needs", config_keys={"required": ["token", "url"]})
        found = discover([root])
        self.assertEqual(dict(found.plugins), {})
        self.assertOneProblem(
            found, "plugin 'needs'", "missing required config keys: token, url",
            "plugins.needs.config",
        )
        partial = {"needs": PluginConfig(name="needs", config={"token": "t"})}
        self.assertOneProblem(discover([root], plugin_configs=partial), "missing required config keys: url")
        full = {"needs": PluginConfig(name="needs", config={"token": "t", "url": "u"})}
        found = discover([root], plugin_configs=full)
        self.assertEqual(list(found.plugins), ["needs"])
        self.assertEqual(found.problems, ())

    def test_disabled_skipped(self) -> None:
        root = self.root()
        self.plugin(root, "off")
        self.plugin(root, "on")
        found = discover(
            [root], plugin_configs={"off": PluginConfig(name="off", enabled=False)}
        )
        self.assertEqual(list(found.plugins), ["on"])
        self.assertEqual(found.disabled, ("off",))
        self.assertEqual(found.problems, ())

    def test_bad_plugin_does_not_stop_others(self) -> None:
        root = self.root()
        bad = os.path.join(root, "bad")
        os.makedirs(bad)
        with open(os.path.join(bad, "manifest.yaml"), "w") as f:
            f.write("manifest_spec: ductile.plugin\nprotocol: 1\n")
        self.plugin(root, "good")
        found = discover([root])
        self.assertEqual(list(found.plugins), ["good"])
        self.assertOneProblem(
            found, f"plugin in {bad} not loaded", "manifest_version: is required"
        )

    def test_unsupported_protocol_reported(self) -> None:
        root = self.root()
        self.plugin(root, "old", protocol=1)
        self.assertOneProblem(discover([root]), "protocol: unsupported protocol 1 (supported: 2)")

    def test_missing_and_file_roots(self) -> None:
        good = self.root()
        self.plugin(good, "p")
        missing = os.path.abspath(self.mktemp())
        afile = os.path.join(good, "file")
        open(afile, "w").close()
        found = discover([missing, afile, good])
        self.assertEqual(list(found.plugins), ["p"])
        self.assertEqual(
            found.problems,
            (f"plugin root does not exist: {missing}", f"plugin root is not a directory: {afile}"),
        )

    def test_orphan_directory_noted(self) -> None:
        root = self.root()
        orphan = os.path.join(root, "orphan")
        os.makedirs(orphan)
        open(os.path.join(orphan, "run.py"), "w").close()
        self.plugin(root, "p")
        found = discover([root])
        self.assertEqual(list(found.plugins), ["p"])
        self.assertOneProblem(found, f"plugin directory {orphan} has run.py but no manifest.yaml")
