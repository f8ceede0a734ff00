"""
The argparse handlers of ``ductile relay`` in a real subprocess: config load,
``task.react`` and the process exit code.

``ductile.config.load_config`` is written on another branch, so the child
process installs a small stand-in that builds a Config from a JSON file.
"""
from __future__ import annotations

import json
import os
import sys

from twisted.internet import utils
from twisted.trial import unittest

from .test_relay_sender_stub import Served, StubReceiver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, sys
sys.path.insert(0, ROOT)
import ductile.config as dc
from ductile.config.models import Config, Instance, ServiceConfig

class ConfigError(Exception):
    pass

def load_config(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}")
    return Config(config_file=path, config_dir=".", service=ServiceConfig(name=data["service"]),
                  instances=(Instance(**data["instance"]),))

dc.load_config = load_config
dc.ConfigError = ConfigError
import argparse
from ductile.cli.relay_cmd import register
p = argparse.ArgumentParser(prog="ductile")
register(p.add_subparsers(dest="noun"))
args = p.parse_args(sys.argv[1:])
sys.exit(args.handler(args))
""".replace("ROOT", repr(ROOT))


class HandlerProcessTests(unittest.TestCase):
    timeout = 30

    def write_config(self, base_url: str, secret: str = "s3cret-value") -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            json.dump(
                {
                    "service": "home-primary",
                    "instance": {
                        "name": "lab",
                        "base_url": base_url,
                        "ingress_path": "/ingest/peer/home-primary",
                        "secret_ref": "relay-lab-v1",
                        "secret": secret,
                        "timeout": 5.0,
                    },
                },
                f,
            )
        return path

    async def child(self, *argv: str) -> tuple[bytes, bytes, int]:
        script = os.path.abspath(self.mktemp())
        with open(script, "w") as f:
            f.write(CHILD)
        return await utils.getProcessOutputAndValue(
            sys.executable, [script, *argv], env=dict(os.environ), path=ROOT
        )

    async def test_send_accepted_exits_0(self) -> None:
        srv = Served(self, StubReceiver())
        cfg = self.write_config(srv.base_url)
        out, err, code = await self.child("relay", "send", "lab", "--event", "backup.ready", "--config", cfg)
        self.assertEqual((code, err), (0, b""))
        self.assertEqual(out, b"Relayed backup.ready to lab\nReceiver event id: rev-1\nReceiver job id: rjob-1\n")

    async def test_send_rejected_exits_1(self) -> None:
        srv = Served(self, StubReceiver(secret="other"))
        cfg = self.write_config(srv.base_url)
        out, err, code = await self.child("relay", "send", "--config", cfg, "--event", "backup.ready", "lab")
        self.assertEqual((code, out), (1, b""))
        self.assertEqual(err, b"ductile relay send: relay receiver rejected request: forbidden\n")

    async def test_check_exit_codes(self) -> None:
        srv = Served(self, StubReceiver())
        out, _, code = await self.child("relay", "check", "lab", "--config", self.write_config(srv.base_url))
        self.assertEqual(code, 0, out)
        out, _, code = await self.child(
            "relay", "check", "lab", "--config", self.write_config(srv.base_url, secret="other")
        )
        self.assertEqual(code, 1)
        self.assertIn(b"problem  shared secret  signature rejected", out)

    async def test_config_error_exits_1(self) -> None:
        out, err, code = await self.child("relay", "send", "lab", "--event", "a.b", "--config", "/nonexistent.json")
        self.assertEqual((code, out), (1, b""))
        self.assertEqual(err, b"ductile relay send: config file /nonexistent.json: No such file or directory\n")
