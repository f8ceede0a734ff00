"""
The config loader: the seed's example configs, includes, env files,
interpolation, merge rules, tokens and scopes_hash, relay validation and
unknown keys.  Every rejection asserts its message names the file, the key
and what was expected.
"""
from __future__ import annotations

import os
import textwrap

import blake3
from twisted.trial.unittest import SynchronousTestCase

from ductile.config import ConfigError, load_config
from ductile.config.models import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETC = os.path.join(ROOT, "etc")
SECRET = "sekrit-Value-9f8e7d"
SEED_ENV = {"RELAY_LAB_V1_SECRET": SECRET, "DUCTILE_EXAMPLE_DATA": "/tmp/ductile-example"}

SCOPES = b'{"scopes": ["jobs:ro", "relay:rw"]}\n'
SCOPES_HASH = "blake3:" + blake3.blake3(SCOPES).hexdigest()

TOKENS = f"""\
tokens:
  - name: relay-lab-v1
    key: ${{RELAY_LAB_V1_SECRET}}
    scopes_file: scopes/relay-admin.json
    scopes_hash: {SCOPES_HASH}
"""


class ConfigDirMixin:
    """Writes config files into a fresh temporary directory."""

    def make(self, files: dict[str, str], *, plugins: bool = True) -> str:
        base = self.mktemp()  # type: ignore[attr-defined]
        os.makedirs(base)
        if plugins:
            os.makedirs(os.path.join(base, "plugins"))
        for name, text in files.items():
            path = os.path.join(base, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            mode = "wb" if isinstance(text, bytes) else "w"
            with open(path, mode) as f:
                f.write(text if isinstance(text, bytes) else textwrap.dedent(text))
        return base

    def base_files(self, **extra: str) -> dict[str, str]:
        files = {
            "config.yaml": "service:\n  name: lab\nplugin_roots: [plugins]\n",
        }
        files.update(extra)
        return files

    def load(self, files: dict[str, str], environ: dict[str, str] | None = None, **kw) -> Config:
        return load_config(self.make(files), environ=environ if environ is not None else {}, **kw)

    def fails(self, files: dict[str, str], environ: dict[str, str] | None = None, **kw) -> ConfigError:
        base = self.make(files)
        with self.assertRaises(ConfigError) as cm:  # type: ignore[attr-defined]
            load_config(base, environ=environ if environ is not None else {}, **kw)
        return cm.exception

    def assertProblem(self, error: ConfigError, *parts: str) -> None:
        for problem in error.problems:
            if all(p in problem for p in parts):
                return
        self.fail(f"no problem containing {parts!r} in {error.problems!r}")  # type: ignore[attr-defined]

    def assertWarning(self, warnings, *parts: str) -> None:
        for warning in warnings:
            if all(p in warning for p in parts):
                return
        self.fail(f"no warning containing {parts!r} in {warnings!r}")  # type: ignore[attr-defined]


class SeedConfigTests(SynchronousTestCase, ConfigDirMixin):
    """The seed's two config sets, in etc/, load with the values it states."""

    def test_home_primary(self) -> None:
        config = load_config(os.path.join(ETC, "home-primary"), environ=SEED_ENV)
        self.assertEqual(config.warnings, ())
        self.assertEqual(config.service.name, "home-primary")
        self.assertEqual(config.service.tick_interval, 60.0)
        self.assertEqual(config.service.log_level, "info")
        self.assertTrue(config.api.enabled)
        self.assertEqual(config.api.listen, "127.0.0.1:8080")
        self.assertEqual(config.state.path, os.path.join(ETC, "home-primary", "data", "state.db"))
        self.assertEqual(config.plugin_roots, (os.path.join(ETC, "plugins"),))
        self.assertIsNone(config.remote_ingress)
        (lab,) = config.instances
        self.assertEqual(lab.name, "lab")
        self.assertTrue(lab.enabled)
        self.assertEqual(lab.base_url, "http://127.0.0.1:8081")
        self.assertEqual(lab.ingress_path, "/ingest/peer/home-primary")
        self.assertEqual(lab.url, "http://127.0.0.1:8081/ingest/peer/home-primary")
        self.assertEqual(lab.secret_ref, "relay-lab-v1")
        self.assertEqual(lab.secret, SECRET)
        self.assertEqual(lab.key_id, "v1")
        self.assertEqual(lab.timeout, 10.0)
        self.assertEqual(lab.allow, ("backup.ready",))
        self.assertIs(config.enabled_instance(" lab "), lab)
        (token,) = config.tokens
        self.assertEqual(token.name, "relay-lab-v1")
        self.assertEqual(token.scopes, ("relay:rw",))
        self.assertEqual([p.spec["name"] for p in config.pipelines], ["relay-backup-to-lab"])

    def test_lab(self) -> None:
        config = load_config(os.path.join(ETC, "lab"), environ=SEED_ENV)
        self.assertEqual(config.warnings, ())
        self.assertEqual(config.service.name, "lab")
        self.assertEqual(config.api.listen, "127.0.0.1:8081")
        self.assertEqual(config.instances, ())
        ingress = config.remote_ingress
        assert ingress is not None
        self.assertEqual(ingress.listen_path, "/ingest/peer")
        self.assertEqual(ingress.max_body_size, 1048576)
        self.assertEqual(ingress.allowed_clock_skew, 300.0)
        self.assertTrue(ingress.require_key_id)
        (peer,) = ingress.peers
        self.assertEqual(peer.name, "home-primary")
        self.assertTrue(peer.enabled)
        self.assertEqual(len(peer.keys), 1)
        self.assertEqual(peer.keys[0].key_id, "v1")
        self.assertEqual(peer.keys[0].secret_ref, "relay-lab-v1")
        self.assertEqual(peer.keys[0].secret, SECRET)
        self.assertEqual(peer.accept, ("backup.ready",))
        self.assertEqual(peer.baggage_allow, ("trace_id",))
        self.assertIs(ingress.enabled_peer("home-primary"), peer)
        (pipeline,) = config.pipelines
        self.assertEqual(pipeline.spec["on"], "backup.ready")
        self.assertEqual(pipeline.file, os.path.join(ETC, "lab", "pipelines.yaml"))
        self.assertEqual(pipeline.index, 0)

    def test_scopes_hash_in_etc_is_real(self) -> None:
        for name in ("home-primary", "lab"):
            with open(os.path.join(ETC, name, "scopes", "relay-admin.json"), "rb") as f:
                digest = "blake3:" + blake3.blake3(f.read()).hexdigest()
            with open(os.path.join(ETC, name, "tokens.yaml")) as f:
                self.assertIn(f"scopes_hash: {digest}", f.read())

    def test_secret_not_in_repr(self) -> None:
        config = load_config(os.path.join(ETC, "lab"), environ=SEED_ENV)
        self.assertNotIn(SECRET, repr(config))

    def test_seed_without_secret_names_variable(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            load_config(os.path.join(ETC, "home-primary"), environ={})
        message = str(cm.exception)
        self.assertIn("relay-instances.yaml: instances[0].secret_ref", message)
        self.assertIn('relay instance "lab"', message)
        self.assertIn("${RELAY_LAB_V1_SECRET}", message)
        self.assertIn("tokens.yaml: tokens[0].key", message)

    def test_defaults(self) -> None:
        config = self.load(
            self.base_files(
                **{
                    "config.yaml": """\
                        service: {name: home-primary}
                        plugin_roots: [plugins]
                        tokens: [{name: t, key: k}]
                        instances:
                          - {name: lab, base_url: "http://x", ingress_path: /ingest/peer/home-primary, secret_ref: t, timeout: 0s}
                          - {name: lab2, base_url: "http://x", ingress_path: /ingest/peer/home-primary, secret_ref: t, timeout: -5s}
                        remote_ingress:
                          allowed_clock_skew: 0s
                          peers: [{name: home, secret_ref: t}]
                    """
                }
            )
        )
        self.assertEqual(config.service.tick_interval, 60.0)
        self.assertEqual(config.service.dedupe_ttl, 86400.0)
        self.assertFalse(config.api.enabled)
        self.assertEqual(config.api.listen, "127.0.0.1:8080")
        self.assertEqual(config.api.max_body_size, 1048576)
        self.assertEqual([i.timeout for i in config.instances], [10.0, 10.0])
        self.assertEqual(config.instances[0].retry.max_attempts, 10)
        self.assertEqual(config.instances[0].retry.backoff_base, 30.0)
        self.assertEqual(config.instances[0].retry.max_backoff, 3600.0)
        self.assertEqual(config.instances[0].allow, ())
        ingress = config.remote_ingress
        assert ingress is not None
        self.assertEqual(ingress.listen_path, "/ingest/peer")
        self.assertEqual(ingress.allowed_clock_skew, 300.0)
        self.assertEqual(ingress.max_body_size, 1048576)
        self.assertFalse(ingress.require_key_id)
        self.assertEqual(ingress.peers[0].keys[0].key_id, "")
        self.assertEqual(ingress.peers[0].baggage_allow, ())


class LocateTests(SynchronousTestCase, ConfigDirMixin):
    def test_file_or_directory(self) -> None:
        base = self.make(self.base_files())
        by_dir = load_config(base, environ={})
        by_file = load_config(os.path.join(base, "config.yaml"), environ={})
        self.assertEqual(by_dir.config_file, by_file.config_file)
        self.assertEqual(by_dir.config_dir, os.path.abspath(base))

    def test_env_dir_then_home(self) -> None:
        base = self.make(self.base_files())
        config = load_config(None, environ={"DUCTILE_CONFIG_DIR": base})
        self.assertEqual(config.config_dir, os.path.abspath(base))
        home = self.mktemp()
        os.makedirs(os.path.join(home, ".config"))
        os.rename(base, os.path.join(home, ".config", "ductile"))
        config = load_config(None, environ={"HOME": home})
        self.assertEqual(config.config_dir, os.path.join(os.path.abspath(home), ".config", "ductile"))

    def test_missing_directory_names_config_yaml(self) -> None:
        missing = os.path.join(self.mktemp(), "etc")
        with self.assertRaises(ConfigError) as cm:
            load_config(missing, environ={})
        self.assertIn(os.path.join(os.path.abspath(missing), "config.yaml"), str(cm.exception))

    def test_missing_file(self) -> None:
        missing = os.path.join(self.mktemp(), "nope.yaml")
        with self.assertRaises(ConfigError) as cm:
            load_config(missing, environ={})
        self.assertEqual(
            str(cm.exception), f"cannot read config file {os.path.abspath(missing)}: No such file or directory"
        )

    def test_no_plugin_roots_warns(self) -> None:
        config = self.load({"config.yaml": "service: {name: lab}\n"})
        self.assertWarning(config.warnings, "config.yaml: plugin_roots: no plugin roots configured")


class IncludeTests(SynchronousTestCase, ConfigDirMixin):
    def test_files_and_directories_depth_first(self) -> None:
        config = self.load(
            {
                "config.yaml": "include: [a.yaml, conf.d, z.yaml]\nplugin_roots: [plugins]\npipelines: [{name: p0, on: e, steps: [{uses: x}]}]\n",
                "a.yaml": "include: [sub/b.yaml]\npipelines: [{name: p1, on: e, steps: [{uses: x}]}]\n",
                "sub/b.yaml": "pipelines: [{name: p2, on: e, steps: [{uses: x}]}]\n",
                "conf.d/2.yaml": "pipelines: [{name: p4, on: e, steps: [{uses: x}]}]\n",
                "conf.d/1.yaml": "pipelines: [{name: p3, on: e, steps: [{uses: x}]}]\n",
                "conf.d/ignored.txt": "not: yaml: at: all\n",
                "conf.d/deeper/x.yaml": "pipelines: [{name: never, on: e, steps: [{uses: x}]}]\n",
                "z.yaml": "pipelines: [{name: p5, on: e, steps: [{uses: x}]}]\n",
            }
        )
        self.assertEqual([p.spec["name"] for p in config.pipelines], ["p0", "p1", "p2", "p3", "p4", "p5"])
        self.assertTrue(config.pipelines[2].file.endswith(os.path.join("sub", "b.yaml")))

    def test_relative_to_including_file(self) -> None:
        config = self.load(
            {
                "config.yaml": "include: [sub/a.yaml]\nplugin_roots: [plugins]\n",
                "sub/a.yaml": "include: [b.yaml]\n",
                "sub/b.yaml": "service: {name: from-b}\n",
            }
        )
        self.assertEqual(config.service.name, "from-b")

    def test_cycle_names_chain(self) -> None:
        error = self.fails(
            {
                "config.yaml": "include: [a.yaml]\nplugin_roots: [plugins]\n",
                "a.yaml": "include: [b.yaml]\n",
                "b.yaml": "include: [config.yaml]\n",
            }
        )
        self.assertProblem(
            error, "b.yaml: include[0]", "circular dependency detected: config.yaml -> a.yaml -> b.yaml -> config.yaml"
        )

    def test_repeated_include_warns_and_is_read_once(self) -> None:
        config = self.load(
            {
                "config.yaml": "include: [a.yaml, b.yaml]\nplugin_roots: [plugins]\n",
                "a.yaml": "include: [common.yaml]\n",
                "b.yaml": "include: [common.yaml]\n",
                "common.yaml": "tokens: [{name: t, key: k}]\n",
            }
        )
        self.assertEqual([t.name for t in config.tokens], ["t"])
        self.assertWarning(config.warnings, "b.yaml: include[0]", "common.yaml is already included; ignored")

    def test_missing_include(self) -> None:
        error = self.fails({"config.yaml": "include: [tokens.yaml, other.yaml]\n", "tokens.yaml": "tokens: []\n"})
        self.assertProblem(error, "config.yaml: include[1]", "cannot read included file", "other.yaml")

    def test_invalid_yaml_names_file_and_line(self) -> None:
        error = self.fails(
            {"config.yaml": "include: [bad.yaml]\n", "bad.yaml": "service:\n  name: lab\n  tick: [unclosed\n"}
        )
        self.assertProblem(error, "bad.yaml", "invalid YAML at line")

    def test_all_errors_reported_at_once(self) -> None:
        error = self.fails(
            {
                "config.yaml": "include: [a.yaml, b.yaml]\nservice: {tick_interval: soon}\n",
                "a.yaml": "key: [\n",
                "b.yaml": "api: {max_body_size: huge}\n",
            }
        )
        self.assertEqual(len(error.problems), 3, error.problems)
        self.assertIn("3 config errors:", str(error))

    def test_interpolated_include_path(self) -> None:
        config = self.load(
            {"config.yaml": "include: [${WHICH}.yaml]\nplugin_roots: [plugins]\n", "x.yaml": "service: {name: x}\n"},
            environ={"WHICH": "x"},
        )
        self.assertEqual(config.service.name, "x")


class EnvTests(SynchronousTestCase, ConfigDirMixin):
    def test_dotenv_fills_but_never_overrides(self) -> None:
        files = self.base_files(
            **{
                "config.yaml": """\
                    environment_vars:
                      include: [secrets/.env]
                    include: [more.yaml]
                    service: {name: "${NAME}"}
                    plugin_roots: [plugins]
                    api: {listen: "${LISTEN}"}
                """,
                "secrets/.env": "NAME=from-dotenv\nexport LISTEN=127.0.0.1:9999\nLATER=late-value\n",
                "more.yaml": "state: {path: '${LATER}.db'}\n",
            }
        )
        environ = {"NAME": "from-env"}
        config = self.load(files, environ=environ)
        self.assertEqual(config.service.name, "from-env")
        self.assertEqual(config.api.listen, "127.0.0.1:9999")
        self.assertTrue(config.state.path.endswith("late-value.db"))
        self.assertEqual(environ, {"NAME": "from-env"})
        self.assertNotIn("LATER", os.environ)

    def test_missing_dotenv_warns(self) -> None:
        config = self.load(self.base_files(**{"config.yaml": "environment_vars: {include: [nope.env]}\nplugin_roots: [plugins]\n"}))
        self.assertWarning(config.warnings, "config.yaml: environment_vars.include[0]", "cannot read .env file")

    def test_undefined_var_stays_literal_where_unused(self) -> None:
        config = self.load(
            self.base_files(
                **{"config.yaml": "service: {name: lab, log_format: '${NOT_SET}'}\nplugin_roots: [plugins]\ntokens: [{name: spare, key: '${NOT_SET}'}]\n"}
            )
        )
        self.assertEqual(config.service.log_format, "${NOT_SET}")
        self.assertEqual(config.tokens[0].key, "${NOT_SET}")

    def test_undefined_var_in_api_token_is_error(self) -> None:
        error = self.fails(
            self.base_files(
                **{"config.yaml": "api:\n  enabled: true\n  auth:\n    tokens: [{token: '${API_TOKEN}', scopes: ['*']}]\nplugin_roots: [plugins]\n"}
            )
        )
        self.assertProblem(error, "config.yaml: api.auth.tokens[0].token", "unset environment variable ${API_TOKEN}")

    def test_undefined_var_in_plugin_config_is_error(self) -> None:
        error = self.fails(
            self.base_files(
                **{"config.yaml": "plugins:\n  fetch:\n    config: {url: 'https://x/${TOKEN_X}'}\n  off:\n    enabled: false\n    config: {a: '${Y}'}\nplugin_roots: [plugins]\n"}
            )
        )
        self.assertProblem(error, "config.yaml: plugins.fetch.config", "${TOKEN_X}")
        self.assertEqual(len(error.problems), 1)

    def test_undefined_var_in_enabled_instance_secret(self) -> None:
        error = self.fails(
            self.base_files(
                **{
                    "tokens.yaml": "tokens: [{name: t, key: '${NOPE}'}]\n",
                    "config.yaml": "include: [tokens.yaml]\nservice: {name: home}\nplugin_roots: [plugins]\ninstances: [{name: lab, base_url: 'http://x', ingress_path: /ingest/peer/home, secret_ref: t}]\n",
                }
            )
        )
        self.assertProblem(
            error, "config.yaml: instances[0].secret_ref", 'relay instance "lab"', "${NOPE}", "tokens.yaml: tokens[0].key"
        )


class MergeTests(SynchronousTestCase, ConfigDirMixin):
    def test_lists_append_scalars_later_wins_plugins_replace(self) -> None:
        config = self.load(
            {
                "config.yaml": """\
                    include: [over.yaml]
                    service: {name: first, log_level: debug, max_workers: 3}
                    plugin_roots: [plugins]
                    api: {enabled: true, listen: "127.0.0.1:1", auth: {tokens: [{token: a, scopes: ['*']}]}}
                    tokens: [{name: t1, key: k1}]
                    plugins:
                      echo: {config: {a: 1, b: 2}, parallelism: 2}
                      keep: {parallelism: 4}
                    remote_ingress: {require_key_id: true, peers: [{name: p1, secret_ref: t1}]}
                """,
                "over.yaml": """\
                    service: {name: second, dedupe_ttl: 1h}
                    plugin_roots: [other]
                    api: {enabled: false, auth: {tokens: [{token: b, scopes: ['*']}]}}
                    tokens: [{name: t2, key: k2}]
                    plugins:
                      echo: {config: {c: 3}}
                    remote_ingress: {require_key_id: false, listen_path: /relay/, peers: [{name: p2, secret_ref: t2}]}
                """,
            }
        )
        self.assertEqual(config.service.name, "second")
        self.assertEqual(config.service.log_level, "debug")
        self.assertEqual(config.service.max_workers, 3)
        self.assertEqual(config.service.dedupe_ttl, 3600.0)
        self.assertEqual([os.path.basename(r) for r in config.plugin_roots], ["plugins", "other"])
        self.assertFalse(config.api.enabled)
        self.assertEqual(config.api.listen, "127.0.0.1:1")
        self.assertEqual([t.label for t in config.api.tokens], ["api.auth.tokens[0]", "api.auth.tokens[0]"])
        self.assertEqual([t.name for t in config.tokens], ["t1", "t2"])
        self.assertEqual(config.plugins["echo"].config, {"c": 3})
        self.assertIsNone(config.plugins["echo"].parallelism)
        self.assertEqual(config.plugins["keep"].parallelism, 4)
        ingress = config.remote_ingress
        assert ingress is not None
        self.assertFalse(ingress.require_key_id)
        self.assertEqual(ingress.listen_path, "/relay")
        self.assertEqual([p.name for p in ingress.peers], ["p1", "p2"])

    def test_error_names_the_file_that_set_the_value(self) -> None:
        error = self.fails(
            {"config.yaml": "include: [over.yaml]\nservice: {dedupe_ttl: 1h}\n", "over.yaml": "service: {dedupe_ttl: forever}\n"}
        )
        self.assertProblem(error, "over.yaml: service.dedupe_ttl", '"forever"', "Go duration")


class ValueTests(SynchronousTestCase, ConfigDirMixin):
    def test_bad_duration_and_size_messages(self) -> None:
        error = self.fails(
            {
                "config.yaml": "include: [relay-instances.yaml]\nservice: {name: home}\ntokens: [{name: t, key: k}]\n",
                "relay-instances.yaml": """\
                    instances:
                      - {name: lab, base_url: "http://x", ingress_path: /ingest/peer/home, secret_ref: t, timeout: ten}
                    remote_ingress: {max_body_size: 1 gallon}
                """,
            }
        )
        self.assertProblem(error, "relay-instances.yaml: instances[0].timeout", '"ten"', "expected a Go duration")
        self.assertProblem(error, "relay-instances.yaml: remote_ingress.max_body_size", '"1 gallon"', "expected a byte size")

    def test_relative_paths(self) -> None:
        config = self.load(
            {
                "config.yaml": "include: [sub/x.yaml]\nplugin_roots: [plugins, '~/p']\nstate: {path: db/s.db, synchronous: normal}\n",
                "sub/x.yaml": "admin:\n  manhole: {listen: 'tcp:2222:interface=127.0.0.1', host_key: keys/host, authorized_keys: keys/auth}\n",
            },
            environ={"HOME": "/home/op"},
        )
        base = config.config_dir
        self.assertEqual(config.state.path, os.path.join(base, "db", "s.db"))
        self.assertEqual(config.state.synchronous, "normal")
        self.assertEqual(config.plugin_roots, (os.path.join(base, "plugins"), "/home/op/p"))
        assert config.manhole is not None
        self.assertEqual(config.manhole.host_key, os.path.join(base, "keys", "host"))
        self.assertEqual(config.manhole.authorized_keys, os.path.join(base, "keys", "auth"))
        self.assertFalse(config.manhole.allow_remote)
        self.assertWarning(config.warnings, "plugin_roots[1]", "/home/op/p is not a directory")

    def test_manhole_and_listen_errors(self) -> None:
        error = self.fails(
            {"config.yaml": "admin: {manhole: {host_key: k}}\napi: {listen: localhost}\nservice: {max_workers: 0, tick_interval: 10ms}\n"}
        )
        self.assertProblem(error, "config.yaml: admin.manhole.listen", "is required")
        self.assertProblem(error, "config.yaml: admin.manhole.authorized_keys", "is required")
        self.assertProblem(error, "config.yaml: api.listen", '"localhost"', "HOST:PORT")
        self.assertProblem(error, "config.yaml: service.max_workers", "0", "whole number >= 1")
        self.assertProblem(error, "config.yaml: service.tick_interval", '"10ms"', "at least 100ms")

    def test_bad_synchronous_and_log_level(self) -> None:
        error = self.fails({"config.yaml": "state: {synchronous: off}\nservice: {log_level: loud}\n"})
        self.assertProblem(error, "config.yaml: state.synchronous", '"off"', "expected one of full, normal")
        self.assertProblem(error, "config.yaml: service.log_level", '"loud"', "debug, info, warn, error")

    def test_duplicate_yaml_key_is_error(self) -> None:
        error = self.fails({"config.yaml": "service: {name: a}\nplugin_roots: [plugins]\nservice: {name: b}\n"})
        self.assertProblem(error, "config.yaml: invalid YAML at line 3", "mapping key 'service' is already defined")

    def test_numeric_secrets_keep_their_text(self) -> None:
        """A secret like 0123 or 1.50 is the written text, as in Go, not a number."""
        config = self.load(
            {
                "config.yaml": "plugin_roots: [plugins]\ntokens: [{name: a, key: ${A}}, {name: b, key: 1.50}]\n"
                "instances: [{name: lab, base_url: 'http://x', ingress_path: /ingest/peer/ductile, secret_ref: a, key_id: 007}]\n"
            },
            environ={"A": "0123"},
        )
        self.assertEqual([t.key for t in config.tokens], ["0123", "1.50"])
        self.assertEqual(config.instances[0].secret, "0123")
        self.assertEqual(config.instances[0].key_id, "007")

    def test_yaml12_booleans(self) -> None:
        config = self.load(self.base_files(**{"p.yaml": "pipelines: [{name: p, on: x.y, steps: [{uses: a}]}]\n", "config.yaml": "include: [p.yaml]\nplugin_roots: [plugins]\napi: {enabled: yes}\n"}))
        self.assertEqual(config.pipelines[0].spec["on"], "x.y")
        self.assertTrue(config.api.enabled)

    def test_plugins_and_schedules(self) -> None:
        config = self.load(
            self.base_files(
                **{
                    "config.yaml": """\
                        plugin_roots: [plugins]
                        plugins:
                          echo:
                            retry: {max_attempts: 2, backoff_base: 5s}
                            timeouts: {poll: 5s, sync: 2m}
                            parallelism: 1
                            schedules:
                              - {every: 5m, jitter: 10s, payload: {a: 1}, if_running: queue}
                              - {id: nightly, every: daily, command: sync}
                              - {id: cronned, cron: "0 * * * *"}
                              - {id: caught, every: 1h, catch_up: run_once}
                    """
                }
            )
        )
        echo = config.plugins["echo"]
        self.assertEqual(echo.retry.max_attempts, 2)
        self.assertEqual(echo.retry.backoff_base, 5.0)
        self.assertEqual(echo.timeout_for("poll"), 5.0)
        self.assertEqual(echo.timeout_for("sync"), 120.0)
        self.assertEqual(echo.timeout_for("handle"), 120.0)
        self.assertEqual([s.id for s in echo.schedules], ["default", "nightly", "cronned", "caught"])
        first = echo.schedules[0]
        self.assertEqual((first.every, first.jitter, first.command, first.if_running), (300.0, 10.0, "poll", "queue"))
        self.assertEqual(first.payload, {"a": 1})
        self.assertIs(type(first.payload["a"]), int)
        self.assertEqual(echo.schedules[1].every, 86400.0)
        self.assertEqual((echo.schedules[2].trigger, echo.schedules[2].cron), ("cron", "0 * * * *"))
        self.assertEqual(echo.schedules[3].catch_up, "run_once")

    def test_schedule_errors(self) -> None:
        error = self.fails(
            self.base_files(
                **{
                    "config.yaml": """\
                        plugins:
                          echo:
                            schedule: {every: 1h}
                            schedules:
                              - {every: sometimes}
                              - {id: h, every: 1h, command: handle}
                              - {id: d, every: 1h}
                              - {id: d, every: 2h}
                              - {id: n}
                    """
                }
            )
        )
        self.assertProblem(error, "config.yaml: plugins.echo.schedule", "use schedules:")
        self.assertProblem(error, "plugins.echo.schedules[0].every", '"sometimes"', "hourly")
        self.assertProblem(error, "plugins.echo.schedules[1].command", "may not run handle")
        self.assertProblem(error, "plugins.echo.schedules[3].id", 'duplicate schedule id "d"')
        self.assertProblem(error, "plugins.echo.schedules[4].every", "is required")

    def test_pipeline_structure(self) -> None:
        error = self.fails(
            {
                "config.yaml": "include: [pipelines.yaml]\n",
                "pipelines.yaml": """\
                    pipelines:
                      - {name: a, on: x, steps: [{uses: p}]}
                      - {name: a, on: y, steps: [{uses: p}]}
                      - {name: b, steps: [{uses: p}]}
                      - {name: c, on: x, steps: []}
                      - just-a-string
                """,
            }
        )
        self.assertProblem(error, "pipelines.yaml: pipelines[1].name", 'duplicate pipeline name "a"')
        self.assertProblem(error, "pipelines.yaml: pipelines[2].on", "is required")
        self.assertProblem(error, "pipelines.yaml: pipelines[3].steps", "non-empty list of steps")
        self.assertProblem(error, "pipelines.yaml: pipelines[4]", "expected a mapping")


class TokenTests(SynchronousTestCase, ConfigDirMixin):
    def files(self, tokens: str = TOKENS, scopes: bytes = SCOPES) -> dict:
        return {
            "config.yaml": "include: [secrets/tokens.yaml]\nplugin_roots: [plugins]\n",
            "secrets/tokens.yaml": tokens,
            "secrets/scopes/relay-admin.json": scopes,
        }

    def test_scopes_file_relative_to_declaring_file(self) -> None:
        config = self.load(self.files(), environ=SEED_ENV)
        (token,) = config.tokens
        self.assertEqual(token.scopes, ("jobs:ro", "relay:rw"))
        self.assertTrue(token.scopes_file.endswith(os.path.join("secrets", "scopes", "relay-admin.json")))
        self.assertEqual(token.scopes_hash, SCOPES_HASH)

    def test_mismatch_names_token_file_and_both_hashes(self) -> None:
        error = self.fails(self.files(scopes=b'{"scopes": ["*"]}'), environ=SEED_ENV)
        actual = "blake3:" + blake3.blake3(b'{"scopes": ["*"]}').hexdigest()
        self.assertProblem(
            error, "tokens.yaml: tokens[0].scopes_hash", 'token "relay-lab-v1"', "relay-admin.json", SCOPES_HASH, actual
        )
        self.assertNotIn(SECRET, str(error))

    def test_missing_scopes_file(self) -> None:
        files = self.files()
        del files["secrets/scopes/relay-admin.json"]
        error = self.fails(files, environ=SEED_ENV)
        self.assertProblem(error, "tokens.yaml: tokens[0].scopes_file", 'token "relay-lab-v1"', "cannot be read", SCOPES_HASH)

    def test_malformed_hash(self) -> None:
        for bad in ["1111", "blake3:" + "A" * 64, "sha256:" + "1" * 64, "blake3:" + "1" * 63]:
            error = self.fails(self.files(tokens=TOKENS.replace(SCOPES_HASH, bad)), environ=SEED_ENV)
            self.assertProblem(error, "tokens[0].scopes_hash", 'token "relay-lab-v1"', "malformed scopes_hash", bad, "64 lowercase hex")

    def test_hash_without_file_and_file_without_hash(self) -> None:
        error = self.fails(
            {"config.yaml": "tokens:\n  - {name: a, key: k, scopes_hash: " + SCOPES_HASH + "}\n  - {name: b, key: k, scopes_file: s.json}\n"}
        )
        self.assertProblem(error, "tokens[0].scopes_hash", "scopes_file is missing")
        self.assertProblem(error, "tokens[1].scopes_file", "no scopes_hash")

    def test_bad_scopes_json(self) -> None:
        bad = b'{"scope": "x"}'
        tokens = TOKENS.replace(SCOPES_HASH, "blake3:" + blake3.blake3(bad).hexdigest())
        error = self.fails(self.files(tokens=tokens, scopes=bad), environ=SEED_ENV)
        self.assertProblem(error, "tokens[0].scopes_file", 'expected JSON {"scopes"')

    def test_duplicate_token_names(self) -> None:
        error = self.fails({"config.yaml": "include: [t.yaml]\ntokens: [{name: a, key: k}]\n", "t.yaml": "tokens: [{name: a, key: j}]\n"})
        self.assertProblem(error, "t.yaml: tokens[0].name", 'duplicate token name "a"', "config.yaml: tokens[0]")

    def test_tokens_with_scopes_are_api_credentials(self) -> None:
        config = self.load(dict(self.files(), **{"config.yaml": "include: [secrets/tokens.yaml]\nplugin_roots: [plugins]\napi: {enabled: true}\n"}), environ=SEED_ENV)
        (cred,) = config.api.tokens
        self.assertEqual((cred.label, cred.token, cred.scopes), ("relay-lab-v1", SECRET, ("jobs:ro", "relay:rw")))
        self.assertEqual(config.warnings, ())

    def test_unusable_scoped_token_warns(self) -> None:
        files = dict(self.files(), **{"config.yaml": "include: [secrets/tokens.yaml]\nplugin_roots: [plugins]\napi: {enabled: true}\n"})
        config = self.load(files, environ={})
        self.assertEqual(config.api.tokens, ())
        self.assertWarning(
            config.warnings, "secrets/tokens.yaml: tokens:", 'token "relay-lab-v1"', "${RELAY_LAB_V1_SECRET}", "not an API credential"
        )
        self.assertWarning(config.warnings, "api.enabled", "no credential")

    def test_api_without_any_credential_warns(self) -> None:
        config = self.load(self.base_files(**{"config.yaml": "api: {enabled: true}\nplugin_roots: [plugins]\n"}))
        self.assertWarning(config.warnings, "config.yaml: api.enabled", "no credential")


RELAY_BASE = """\
service: {name: home}
plugin_roots: [plugins]
tokens: [{name: t, key: k}, {name: empty, key: ""}]
"""


def relay(extra: str) -> str:
    return RELAY_BASE + textwrap.dedent(extra)


class RelayValidationTests(SynchronousTestCase, ConfigDirMixin):
    def test_secret_ref_not_found(self) -> None:
        error = self.fails(
            {
                "config.yaml": RELAY_BASE + "include: [relay-instances.yaml, relay-ingress.yaml]\n",
                "relay-instances.yaml": "instances: [{name: lab, base_url: 'http://x', ingress_path: /ingest/peer/home, secret_ref: x}]\n",
                "relay-ingress.yaml": "remote_ingress: {peers: [{name: home-primary, secret_ref: y}]}\n",
            }
        )
        self.assertProblem(error, "relay-instances.yaml: instances[0].secret_ref", 'relay instance "lab": secret_ref "x" not found in tokens')
        self.assertProblem(error, "relay-ingress.yaml: remote_ingress.peers[0].secret_ref", 'relay peer "home-primary": secret_ref "y" not found in tokens')

    def test_empty_secret(self) -> None:
        error = self.fails({"config.yaml": RELAY_BASE + "remote_ingress: {peers: [{name: p, secret_ref: empty}]}\n"})
        self.assertProblem(error, "remote_ingress.peers[0].secret_ref", 'secret_ref "empty" resolves to an empty key')

    def test_disabled_entries_ignored(self) -> None:
        config = self.load(
            {
                "config.yaml": relay(
                    """\
                    instances:
                      - {name: Bad_Name, enabled: false, base_url: 'ftp:nope', secret_ref: missing, timeout: soon, allow: [Bad_Type]}
                      - {name: lab, base_url: 'https://lab.example/base/', ingress_path: /ingest/peer/home, secret_ref: t}
                      - {name: lab, enabled: false, base_url: 'http://x', ingress_path: /x, secret_ref: t}
                    remote_ingress:
                      peers: [{name: old, enabled: false, secret_ref: '${GONE}'}]
                    api: {enabled: true, auth: {tokens: [{token: x, scopes: ['*']}]}}
                """
                )
            }
        )
        self.assertEqual([(i.name, i.enabled) for i in config.instances], [("Bad_Name", False), ("lab", True), ("lab", False)])
        self.assertEqual(config.enabled_instance("lab").secret, "k")
        self.assertEqual(config.enabled_instance("lab").url, "https://lab.example/base/ingest/peer/home")
        assert config.remote_ingress is not None
        self.assertIsNone(config.remote_ingress.enabled_peer("old"))
        self.assertEqual(config.warnings, ())

    def test_instance_field_errors(self) -> None:
        error = self.fails(
            {
                "config.yaml": relay(
                    """\
                    instances:
                      - {name: a, base_url: 'lab.example', ingress_path: /ingest/peer/home, secret_ref: t, allow: [backup.ready, Backup_Ready]}
                      - {name: b, base_url: 'http://x', ingress_path: 'ingest/peer/home', secret_ref: t}
                      - {name: a, base_url: 'http://x', ingress_path: /ingest/peer/home, secret_ref: t}
                      - {base_url: 'http://x'}
                      - {name: c, base_url: 'http://x', ingress_path: /ingest/peer/home}
                """
                )
            }
        )
        self.assertProblem(error, "instances[0].base_url", '"lab.example"', "absolute http:// or https:// URL")
        self.assertProblem(error, "instances[0].allow[1]", '"Backup_Ready"', "relay event type")
        self.assertProblem(error, "instances[1].ingress_path", "starting with /")
        self.assertProblem(error, "instances[2].name", 'duplicate instance name "a"', "config.yaml: instances[0]")
        self.assertProblem(error, "instances[3].name", "is required")
        self.assertProblem(error, "instances[4].secret_ref", "secret_ref is required")

    def test_peer_errors(self) -> None:
        error = self.fails(
            {
                "config.yaml": relay(
                    """\
                    remote_ingress:
                      listen_path: ingest
                      peers:
                        - {name: p, secret_ref: t, accept: [ok.type, "bad..type"]}
                        - {name: p, secret_ref: t}
                        - {name: q, secret_ref: t, keys: [{key_id: v2, secret_ref: t}]}
                        - {name: r, keys: [{key_id: v1, secret_ref: t}, {key_id: v1, secret_ref: t}]}
                """
                )
            }
        )
        self.assertProblem(error, "remote_ingress.listen_path", '"ingest"', "starting with /")
        self.assertProblem(error, "remote_ingress.peers[0].accept[1]", '"bad..type"', "relay event type")
        self.assertProblem(error, "remote_ingress.peers[1].name", 'duplicate peer name "p"')
        self.assertProblem(error, "remote_ingress.peers[2].keys", "either secret_ref/key_id or keys, not both")
        self.assertProblem(error, "remote_ingress.peers[3].keys[1].key_id", 'duplicate key_id "v1"')

    def test_key_rotation_form(self) -> None:
        config = self.load(
            {
                "config.yaml": RELAY_BASE.replace("{name: t, key: k}", "{name: t, key: k}, {name: t2, key: k2}")
                + "remote_ingress:\n  peers: [{name: home, keys: [{key_id: v1, secret_ref: t}, {key_id: v2, secret_ref: t2}]}]\n"
            }
        )
        assert config.remote_ingress is not None
        (peer,) = config.remote_ingress.peers
        self.assertEqual([(k.key_id, k.secret_ref, k.secret) for k in peer.keys], [("v1", "t", "k"), ("v2", "t2", "k2")])

    def test_listen_path_normalised(self) -> None:
        for raw, expected in [("/ingest/peer/", "/ingest/peer"), ("  /x//  ", "/x"), ("/", "/"), ("''", "/ingest/peer")]:
            config = self.load({"config.yaml": RELAY_BASE + f"remote_ingress: {{listen_path: {raw}}}\n"})
            assert config.remote_ingress is not None
            self.assertEqual(config.remote_ingress.listen_path, expected, raw)

    def test_name_and_ingress_path_warnings(self) -> None:
        config = self.load(
            {
                "config.yaml": "service: {name: Home_Primary}\nplugin_roots: [plugins]\ntokens: [{name: t, key: k}]\n"
                "instances: [{name: Lab, base_url: 'http://x', ingress_path: /ingest/peer/other, secret_ref: t}]\n"
                "remote_ingress: {peers: [{name: Peer1, secret_ref: t}]}\n"
            }
        )
        self.assertWarning(config.warnings, "config.yaml: service.name", '"Home_Primary"', "lower-case hyphenated")
        self.assertWarning(config.warnings, "instances[0].name", '"Lab"', "lower-case hyphenated")
        self.assertWarning(config.warnings, "remote_ingress.peers[0].name", '"Peer1"')
        self.assertWarning(config.warnings, "instances[0].ingress_path", '"/ingest/peer/other"', 'does not end in "/Home_Primary"')

    def test_trailing_slash_ingress_path_warns(self) -> None:
        config = self.load({"config.yaml": RELAY_BASE + "instances: [{name: lab, base_url: 'http://x', ingress_path: /ingest/peer/home/, secret_ref: t}]\n"})
        self.assertWarning(config.warnings, "instances[0].ingress_path", '"/ingest/peer/home/" does not end in "/home"')

    def test_remote_ingress_without_api_warns(self) -> None:
        config = self.load({"config.yaml": RELAY_BASE + "remote_ingress: {peers: [{name: p, secret_ref: t}]}\n"})
        self.assertWarning(config.warnings, "config.yaml: remote_ingress:", "api.enabled is false")

    def test_api_and_remote_ingress_together(self) -> None:
        config = self.load({"config.yaml": RELAY_BASE + "api: {enabled: true, auth: {tokens: [{token: x, scopes: ['*']}]}}\nremote_ingress: {peers: [{name: p, secret_ref: t}]}\n"})
        self.assertTrue(config.api.enabled)
        self.assertIsNotNone(config.remote_ingress)
        self.assertEqual(config.warnings, ())


class UnknownKeyTests(SynchronousTestCase, ConfigDirMixin):
    FILES = {
        "config.yaml": "include: [extra.yaml]\nplugin_roots: [plugins]\nservice: {name: lab, nmae: x}\n",
        "extra.yaml": "instances: [{name: lab, base_url: 'http://x', ingress_path: /ingest/peer/lab, secret_ref: t, colour: red}]\ntokens: [{name: t, key: k}]\nwidgets: 3\n",
    }

    def test_warning_names_file_and_key(self) -> None:
        config = self.load(self.FILES)
        self.assertWarning(config.warnings, "config.yaml: service.nmae", "unknown key", "did you mean name?")
        self.assertWarning(config.warnings, "extra.yaml: instances[0].colour", "unknown key")
        self.assertWarning(config.warnings, "extra.yaml: widgets", "unknown key")

    def test_strict_argument_makes_errors(self) -> None:
        error = self.fails(self.FILES, strict=True)
        self.assertProblem(error, "config.yaml: service.nmae", "unknown key")
        self.assertProblem(error, "extra.yaml: widgets", "unknown key")

    def test_service_strict_makes_errors(self) -> None:
        files = dict(self.FILES, **{"config.yaml": self.FILES["config.yaml"].replace("nmae: x", "nmae: x, strict: true")})
        error = self.fails(files)
        self.assertProblem(error, "extra.yaml: instances[0].colour", "unknown key")

    def test_unimplemented_features_warn_even_when_strict(self) -> None:
        config = self.load(
            self.base_files(
                **{
                    "config.yaml": """\
                        service:
                          name: lab
                          strict: true
                          admission: {require_api_auth: true}
                          job_transitions_retention: 720h
                        plugin_roots: [plugins]
                        secrets: {vault_file: vault.age}
                        webhooks: {listen: ':9000', endpoints: [{name: gh}]}
                        routes: [{from: a, event_type: b, to: c}]
                        accounts: {bot: {uid: 1000}}
                        tcc_paths: [/x]
                        api: {max_concurrent_sync: 5, allowed_origins: ['*']}
                        plugins:
                          echo: {circuit_breaker: {threshold: 3}, uses: base}
                        remote_ingress: {peers: [{name: p, secret_ref: t, allow_sync: true}]}
                        tokens: [{name: t, key: k, description: d, created_at: 2026-01-01}]
                    """
                }
            )
        )
        for key in (
            "service.admission.require_api_auth",
            "service.job_transitions_retention",
            "secrets",
            "webhooks",
            "routes",
            "accounts",
            "tcc_paths",
            "api.max_concurrent_sync",
            "api.allowed_origins",
            "plugins.echo.circuit_breaker",
            "plugins.echo.uses",
            "remote_ingress.peers[0].allow_sync",
        ):
            self.assertWarning(config.warnings, f"config.yaml: {key}:", "not implemented")


class GoFullConfigTests(SynchronousTestCase, ConfigDirMixin):
    """A config using most Go ductile keys loads, with warnings, even when strict."""

    FIXTURE = os.path.join(ROOT, "tests", "fixtures", "config", "go-full")

    def test_loads_with_warnings(self) -> None:
        for strict in (False, True):
            config = load_config(self.FIXTURE, environ={}, strict=strict)
            self.assertEqual(config.service.name, "go-box")
            self.assertEqual(config.service.tick_interval, 30.0)
            self.assertEqual(config.service.log_level, "warn")
            self.assertEqual(config.service.dedupe_ttl, 12 * 3600.0)
            self.assertEqual(config.service.max_workers, 2)
            self.assertEqual(config.api.listen, "127.0.0.1:8090")
            self.assertEqual(
                [(t.label, t.token) for t in config.api.tokens],
                [("api.auth.tokens[0]", "fixture-admin-token"), ("github-integration", "fixture-gh-token")],
            )
            self.assertEqual(config.instances[0].secret, "fixture-gh-token")
            assert config.remote_ingress is not None
            self.assertEqual(config.remote_ingress.peers[0].keys[0].key_id, "v1")
            echo = config.plugins["echo"]
            self.assertEqual([s.id for s in echo.schedules], ["tick", "nightly", "once"])
            self.assertEqual(echo.schedules[0].if_running, "skip")
            self.assertEqual(echo.timeout_for("handle"), 120.0)
            self.assertEqual(len(config.pipelines), 1)
            for key in ("secrets", "webhooks", "routes", "accounts", "tcc_paths", "plugins.echo.circuit_breaker",
                        "service.admission.require_api_auth"):
                self.assertWarning(config.warnings, f"config.yaml: {key}:", "not implemented")
            self.assertFalse([w for w in config.warnings if "unknown key" in w])
