"""
C{ductile config check}: summary, warnings, errors, exit codes, and no
secret ever printed.
"""
from __future__ import annotations

import io
import json
import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from ductile.cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETC = os.path.join(ROOT, "etc")
SECRET = "do-not-print-me-4b1d"


class ConfigCheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(os, "environ", dict(os.environ, RELAY_LAB_V1_SECRET=SECRET, DUCTILE_EXAMPLE_DATA="/tmp/ductile-example"))
        self.out = io.StringIO()
        self.patch(sys, "stdout", self.out)

    def run_check(self, *argv: str) -> tuple[int, str]:
        code = main(["config", "check", *argv])
        return code, self.out.getvalue()

    def make(self, files: dict[str, str]) -> str:
        base = self.mktemp()
        os.makedirs(os.path.join(base, "plugins", "echo", "nested", "inner"))
        with open(os.path.join(base, "plugins", "echo", "manifest.yaml"), "w") as f:
            f.write("name: echo\n")
        with open(os.path.join(base, "plugins", "echo", "nested", "inner", "manifest.yaml"), "w") as f:
            f.write("name: inner\n")
        for name, text in files.items():
            with open(os.path.join(base, name), "w") as f:
                f.write(text)
        return base

    def test_lab_summary(self) -> None:
        code, out = self.run_check("--config", os.path.join(ETC, "lab"))
        self.assertEqual(code, 0, out)
        self.assertIn("service: lab\n", out)
        self.assertIn("api: enabled, listen 127.0.0.1:8081\n", out)
        self.assertIn("token: relay-lab-v1 = *** (scopes: relay:rw)\n", out)
        self.assertIn("instances: 0\n", out)
        self.assertIn("peers: 1\n", out)
        self.assertIn("home-primary keys=[v1=relay-lab-v1:***] accept=backup.ready baggage=trace_id", out)
        self.assertIn("allowed_clock_skew=300s require_key_id=true", out)
        self.assertIn("pipelines: 1\n", out)
        self.assertIn("plugins found:", out)
        self.assertIn("config OK", out)
        self.assertNotIn(SECRET, out)

    def test_home_primary_json(self) -> None:
        code, out = self.run_check("--config", os.path.join(ETC, "home-primary"), "--json")
        self.assertEqual(code, 0, out)
        self.assertNotIn(SECRET, out)
        data = json.loads(out)
        self.assertTrue(data["ok"])
        self.assertEqual(data["service"]["name"], "home-primary")
        self.assertEqual(data["api"]["listen"], "127.0.0.1:8080")
        (inst,) = data["instances"]
        self.assertEqual(inst["name"], "lab")
        self.assertEqual(inst["url"], "http://127.0.0.1:8081/ingest/peer/home-primary")
        self.assertEqual(inst["secret_ref"], "relay-lab-v1")
        self.assertEqual(inst["secret"], "***")
        self.assertEqual(data["tokens"][0]["key"], "***")
        self.assertEqual(data["api"]["credentials"][0]["token"], "***")
        self.assertEqual(data["peers"], [])
        self.assertEqual(data["pipelines"], 1)
        self.assertEqual(data["errors"], [])

    def test_plugins_counted_and_warnings_printed(self) -> None:
        base = self.make({"config.yaml": "service: {name: lab, colour: blue}\nplugin_roots: [plugins]\n"})
        code, out = self.run_check("--config", base)
        self.assertEqual(code, 0, out)
        self.assertIn("plugins found: 2 (under 1 plugin root(s))", out)
        self.assertIn("3 warning(s):\n  warning: config.yaml: service.colour: unknown key", out)
        # The fixture's manifests are placeholders: config check loads plugins
        # as the service would and says why each one was not loaded.
        self.assertIn("manifest_spec: is required", out)
        self.assertIn("plugins loaded: none", out)

    def test_strict_flag_fails(self) -> None:
        base = self.make({"config.yaml": "service: {name: lab, colour: blue}\nplugin_roots: [plugins]\n"})
        code, out = self.run_check("--config", base, "--strict")
        self.assertEqual(code, 1)
        self.assertIn("error: config.yaml: service.colour: unknown key", out)
        self.assertIn("config check FAILED", out)

    def test_errors_exit_1_without_secret(self) -> None:
        base = self.make(
            {
                "config.yaml": "include: [tokens.yaml]\nservice: {name: lab}\nplugin_roots: [plugins]\n"
                "remote_ingress: {peers: [{name: p, secret_ref: nope}, {name: q, secret_ref: real, accept: [Bad_Type]}]}\n",
                "tokens.yaml": "tokens: [{name: real, key: '${RELAY_LAB_V1_SECRET}'}]\n",
            }
        )
        code, out = self.run_check("--config", base)
        self.assertEqual(code, 1)
        self.assertIn('relay peer "p": secret_ref "nope" not found in tokens', out)
        self.assertIn('remote_ingress.peers[1].accept[0]: invalid value "Bad_Type"', out)
        self.assertNotIn(SECRET, out)

        self.out.seek(0)
        self.out.truncate()
        code, out = self.run_check("--config", base, "--json")
        self.assertEqual(code, 1)
        data = json.loads(out)
        self.assertFalse(data["ok"])
        self.assertEqual(len(data["errors"]), 2)
        self.assertNotIn(SECRET, out)

    def test_missing_config(self) -> None:
        code, out = self.run_check("--config", os.path.join(self.mktemp(), "none.yaml"))
        self.assertEqual(code, 1)
        self.assertIn("cannot read config file", out)

    def test_secret_in_invalid_yaml_not_printed(self) -> None:
        """A secret that breaks the YAML it is interpolated into is not echoed."""
        os.environ["RELAY_LAB_V1_SECRET"] = "x: [" + SECRET
        base = self.make({"config.yaml": "plugin_roots: [plugins]\ntokens: [{name: t, key: ${RELAY_LAB_V1_SECRET}}]\n"})
        code, out = self.run_check("--config", base)
        self.assertEqual(code, 1)
        self.assertIn("config.yaml: invalid YAML at line 2", out)
        self.assertNotIn(SECRET, out)


class ConfigCheckLoadsEverythingTests(SynchronousTestCase):
    """config check loads plugins and compiles pipelines, as the service would."""

    def check(self, files: dict) -> tuple[int, str]:
        import io

        from ductile.cli.main import main
        from ductile.testing.instance import write_config

        base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(base, "plugins"))
        cfg = write_config(os.path.join(base, "cfg"), files)
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        code = main(["config", "check", "--config", cfg])
        return code, out.getvalue()

    def test_pipeline_with_unknown_plugin_fails(self) -> None:
        code, text = self.check({"config.yaml": {
            "service": {"name": "x"}, "plugin_roots": ["../plugins"],
            "pipelines": [{"name": "p", "on": "a.b", "steps": [{"id": "s", "uses": "ghost"}]}],
        }})
        self.assertEqual(code, 1)
        self.assertIn('pipeline "p" step "s": unknown plugin "ghost"', text)
        self.assertIn("config check FAILED", text)

    def test_manhole_on_all_interfaces_fails(self) -> None:
        code, text = self.check({"config.yaml": {
            "service": {"name": "x"}, "plugin_roots": ["../plugins"],
            "admin": {"manhole": {"listen": "tcp:2222", "host_key": "k", "authorized_keys": "a"}},
        }})
        self.assertEqual(code, 1)
        self.assertIn("admin.manhole", text)
