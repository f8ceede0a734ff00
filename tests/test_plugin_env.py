"""
C{service.plugin_env_passthrough}: the daemon's variables a plugin also
gets, on top of its fixed minimal environment — config checks, and a real
instance running a real plugin.
"""
from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from ductile.queue import JobSpec
from ductile.testing.instance import read_records, start_instance, wait_until, write_config
from ductile.testing.plugins import write_recorder
from tests.test_config_loader import ConfigDirMixin


class PassthroughConfigTests(SynchronousTestCase, ConfigDirMixin):
    def test_names_parsed_without_warning(self) -> None:
        config = self.load(self.base_files(**{
            "config.yaml": "service:\n  name: lab\n  plugin_env_passthrough: [AWS_PROFILE, HTTPS_PROXY, AWS_PROFILE]\n"
                           "plugin_roots: [plugins]\n",
        }))
        self.assertEqual(config.service.plugin_env_passthrough, ("AWS_PROFILE", "HTTPS_PROXY"))
        self.assertEqual([w for w in config.warnings if "plugin_env_passthrough" in w], [])

    def test_bad_values_named(self) -> None:
        error = self.fails(self.base_files(**{
            "config.yaml": "service:\n  plugin_env_passthrough: [GOOD, 'not a name', 3]\nplugin_roots: [plugins]\n",
        }))
        self.assertProblem(error, "config.yaml: service.plugin_env_passthrough[1]", '"not a name"',
                           "expected an environment variable name")
        self.assertProblem(error, "service.plugin_env_passthrough[2]", "expected an environment variable name")
        error = self.fails(self.base_files(**{
            "config.yaml": "service:\n  plugin_env_passthrough: AWS_PROFILE\nplugin_roots: [plugins]\n",
        }))
        self.assertProblem(error, "service.plugin_env_passthrough", "expected a list of environment variable names")


class PassthroughInstanceTests(TestCase):
    timeout = 30

    async def test_plugin_sees_only_the_named_variables(self) -> None:
        for name, value in (("DUCTILE_TEST_PASSED", "yes"), ("DUCTILE_TEST_HIDDEN", "secret-ish")):
            self.addCleanup(os.environ.pop, name, None)
            os.environ[name] = value
        base = os.path.abspath(self.mktemp())
        plugins = os.path.join(base, "plugins")
        write_recorder(plugins, "probe")
        records = os.path.join(base, "records.jsonl")
        cfg = write_config(os.path.join(base, "cfg"), {"config.yaml": {
            "service": {"name": "env-test", "plugin_env_passthrough": ["DUCTILE_TEST_PASSED"]},
            "plugin_roots": [plugins],
            "plugins": {"probe": {"config": {
                "record_file": records, "record_env": ["DUCTILE_TEST_PASSED", "DUCTILE_TEST_HIDDEN", "PATH"],
            }}},
        }})
        service = await start_instance(self, cfg)
        await service.queue.enqueue([JobSpec("probe", "poll")])

        async def recorded() -> Any:
            counts = await service.queue.counts()
            if counts.get("queued", 0) + counts.get("running", 0):
                return None
            return read_records(records)

        [line] = await wait_until(service, recorded)
        self.assertEqual(line["env"]["DUCTILE_TEST_PASSED"], "yes")
        self.assertIsNone(line["env"]["DUCTILE_TEST_HIDDEN"])
        self.assertEqual(line["env"]["PATH"], "/usr/bin:/bin")

        # A reload applies a changed list to the runs after it.
        write_config(cfg, {"config.yaml": {
            "service": {"name": "env-test", "plugin_env_passthrough": ["DUCTILE_TEST_HIDDEN"]},
            "plugin_roots": [plugins],
            "plugins": {"probe": {"config": {
                "record_file": records, "record_env": ["DUCTILE_TEST_PASSED", "DUCTILE_TEST_HIDDEN", "PATH"],
            }}},
        }})
        await service.reload()
        await service.queue.enqueue([JobSpec("probe", "poll")])

        async def two() -> Any:
            lines = await recorded()
            return lines if lines and len(lines) == 2 else None

        [_, after] = await wait_until(service, two)
        self.assertEqual((after["env"]["DUCTILE_TEST_PASSED"], after["env"]["DUCTILE_TEST_HIDDEN"]),
                         (None, "secret-ish"))
