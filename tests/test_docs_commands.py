"""
Every shell command in the docs is one that a test or the demo runs
(issue 8), the cheap ones are run here exactly as written, and the tables
of defaults and metric names match the code.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shlex
import subprocess
import sys
from typing import NamedTuple

from twisted.trial.unittest import SynchronousTestCase

from ductile.config.durations import parse_duration
from ductile.config.models import RelayRetry, RemoteIngress
from ductile.config.relay import DEFAULT_RELAY_TIMEOUT
from ductile.config.sizes import parse_byte_size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
UNIT = os.path.join(ROOT, "etc", "systemd", "ductile@.service")


class Known(NamedTuple):
    """A command form the docs may show, and where it is exercised."""

    pattern: str
    #: (repository file, text that file must contain to exercise the command),
    #: or None when this module runs the command itself.
    exercised_by: tuple[str, str] | None


#: First words of commands that belong to other tools (shown as recipes).
OTHER_TOOLS = frozenset({"mkdir", "cd", "ssh-keygen", "ssh", "cat", "chmod", "systemctl", "journalctl"})

KNOWN = (
    Known(r"etc/demo/run( --keep)?", ("tests/test_demo.py", '"etc", "demo", "run"')),
    Known(r"ductile --help", None),
    Known(r"ductile config check --config etc/(lab|home-primary)", None),
    Known(r"ductile relay check [a-z0-9-]+ --config \S+", ("etc/demo/run", '"relay", "check"')),
    Known(
        r"ductile relay send [a-z0-9-]+ --event [a-z0-9.-]+ --payload '\{[^']*\}' --dedupe-key \S+ --config \S+",
        ("etc/demo/run", '"relay", "send"'),
    ),
    Known(r"ductile relay deliveries --config \S+", ("tests/test_cli_deliveries.py", 'run_cli("relay", "deliveries"')),
    Known(r"ductile relay replay [0-9a-f-]+ --config \S+", ("tests/test_cli_deliveries.py", 'run_cli("relay", "replay"')),
    Known(r"ductile job list --config \S+", ("etc/demo/run", '"job", "list"')),
    Known(r"ductile job inspect [0-9a-f-]+ --config \S+", ("etc/demo/run", '"job", "inspect"')),
    Known(r"twistd -n --pidfile= ductile --config \S+", ("tests/test_twistd.py", '"-n", "--pidfile=", *twistd_args, "ductile"')),
    Known(
        r"twistd -n --pidfile= --logger=ductile\.logging\.json_observer ductile --config \S+",
        ("tests/test_twistd.py", '"--logger=ductile.logging.json_observer"'),
    ),
    Known(r"printf '%s\\n' '\{[^']*\}' \| etc/plugins/[a-z-]+/run\.py", None),
)


def shell_commands(path: str) -> list[tuple[int, str]]:
    """(line number, command) for each command in the file's ```sh blocks; continuations joined."""
    out: list[tuple[int, str]] = []
    in_block = False
    pending = ""
    start = 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            stripped = line.strip()
            if not in_block:
                in_block = stripped == "```sh"
                continue
            if stripped == "```":
                in_block = False
                continue
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if not pending:
                start = n
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            out.append((start, " ".join((pending + stripped).split())))
            pending = ""
    return out


def all_commands() -> list[tuple[str, int, str]]:
    return [(os.path.relpath(p, ROOT), n, cmd) for p in DOCS for n, cmd in shell_commands(p)]


def match(command: str) -> Known | None:
    for known in KNOWN:
        if re.fullmatch(known.pattern, command):
            return known
    return None


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ, PYTHONPATH=ROOT, **env)
    return subprocess.run(argv, cwd=ROOT, env=environ, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60)


def ductile_argv(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[0] == "ductile", command
    return [sys.executable, "-m", "ductile", *words[1:]]


class DocsCommandTests(SynchronousTestCase):
    def test_docs_exist_and_show_commands(self) -> None:
        """Both guides are there and the extractor finds their commands."""
        names = [os.path.basename(p) for p in DOCS]
        self.assertIn("operator-guide.md", names)
        self.assertIn("plugin-guide.md", names)
        commands = [c for _, _, c in all_commands()]
        self.assertIn("etc/demo/run", commands)
        self.assertIn("ductile config check --config etc/lab", commands)

    def test_every_command_is_a_known_exercised_one(self) -> None:
        """
        Each of ductile's own commands in docs/*.md (ductile, twistd, the
        demo, a plugin run by hand) matches a form a test or the demo runs.
        Recipes for other tools (ssh-keygen, ssh, chmod ...) are the
        operator's own and are not ours to exercise.
        """
        unknown = [
            f"{f}:{n}: {c}" for f, n, c in all_commands()
            if match(c) is None and c.split()[0] not in OTHER_TOOLS
        ]
        self.assertEqual(unknown, [], "commands in the docs that no test or the demo exercises")

    def test_unknown_command_is_reported(self) -> None:
        """The matcher is strict: a flag the demo never uses is not 'known'."""
        self.assertIsNone(match("ductile relay check lab --config /etc/ductile/x --json --verbose"))
        self.assertIsNone(match("ductile relay send lab --event backup.ready --config x"))
        self.assertIsNotNone(match("ductile relay check lab --config /etc/ductile/home-primary"))

    def test_exercisers_still_exercise(self) -> None:
        """Each file named as exercising a command form still contains the call."""
        for known in KNOWN:
            if known.exercised_by is None:
                continue
            rel, needle = known.exercised_by
            with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
                self.assertIn(needle, f.read(), f"{rel} no longer exercises {known.pattern}")

    def test_config_check_commands_run(self) -> None:
        """The docs' config checks of the example configs pass, exactly as written."""
        data = os.path.abspath(self.mktemp())
        checks = [c for _, _, c in all_commands() if c.startswith("ductile config check")]
        self.assertEqual(len(checks), 2, checks)
        for command in checks:
            done = run(ductile_argv(command), RELAY_LAB_V1_SECRET="docs-test-secret-0c4f", DUCTILE_EXAMPLE_DATA=data)
            self.assertEqual(done.returncode, 0, command + "\n" + done.stdout + done.stderr)
            self.assertIn("config OK", done.stdout)
            self.assertNotIn("docs-test-secret-0c4f", done.stdout + done.stderr)

    def test_config_check_without_secret_fails_clearly(self) -> None:
        """Without RELAY_LAB_V1_SECRET (which the docs say to set) the check names the variable."""
        environ = {k: v for k, v in os.environ.items() if k != "RELAY_LAB_V1_SECRET"}
        done = subprocess.run(
            ductile_argv("ductile config check --config etc/lab"), cwd=ROOT, stdin=subprocess.DEVNULL,
            env=dict(environ, PYTHONPATH=ROOT, DUCTILE_EXAMPLE_DATA="/tmp"), capture_output=True, text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 1)
        self.assertIn("${RELAY_LAB_V1_SECRET}", done.stdout + done.stderr)

    def test_help_runs(self) -> None:
        done = run(ductile_argv("ductile --help"))
        self.assertEqual(done.returncode, 0, done.stderr)
        for noun in ("config", "relay", "job"):
            self.assertIn(noun, done.stdout)

    def test_plugin_by_hand_runs(self) -> None:
        """The plugin guide's 'try a plugin by hand' line prints what the guide says."""
        lines = [c for _, _, c in all_commands() if c.startswith("printf ")]
        self.assertEqual(len(lines), 1, lines)
        done = run(["/bin/sh", "-c", lines[0]])
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout), {"status": "ok", "result": "healthy"})
        with open(os.path.join(ROOT, "docs", "plugin-guide.md"), encoding="utf-8") as f:
            self.assertIn('prints `{"status": "ok", "result": "healthy"}`', f.read())

    def test_systemd_unit_runs_the_documented_command(self) -> None:
        """The unit's ExecStart is the twistd form the docs show and the tests run."""
        with open(UNIT, encoding="utf-8") as f:
            text = f.read()
        [exec_start] = re.findall(r"^ExecStart=(.*)$", text, re.M)
        self.assertTrue(exec_start.startswith("/opt/ductile/venv/bin/twistd "), exec_start)
        command = "twistd " + exec_start.split(" ", 1)[1]
        self.assertIsNotNone(match(command.replace("%i", "lab")), command)
        for line in ("EnvironmentFile=/etc/ductile/%i.env", "Restart=on-failure", "KillSignal=SIGTERM",
                     "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                     "ReadWritePaths=/var/lib/ductile/%i"):
            self.assertIn(line + "\n", text)
        stop = re.search(r"^TimeoutStopSec=(\S+)$", text, re.M)
        from ductile.plugins.runner import DEFAULT_GRACE

        self.assertGreater(parse_duration(stop.group(1)), DEFAULT_GRACE)


class DocsFactsTests(SynchronousTestCase):
    """The operator guide's tables say what the code does."""

    def setUp(self) -> None:
        with open(os.path.join(ROOT, "docs", "operator-guide.md"), encoding="utf-8") as f:
            self.guide = f.read()

    def default(self, key: str) -> str:
        m = re.search(r"^\| `" + re.escape(key) + r"` \| `([^`]+)` \|", self.guide, re.M)
        self.assertIsNotNone(m, f"no default for {key} in the operator guide")
        return m.group(1)

    def test_relay_defaults_match_code(self) -> None:
        retry = RelayRetry()
        ingress = RemoteIngress()
        self.assertEqual(parse_duration(self.default("timeout")), DEFAULT_RELAY_TIMEOUT)
        self.assertEqual(int(self.default("retry.max_attempts")), retry.max_attempts)
        self.assertEqual(parse_duration(self.default("retry.backoff_base")), retry.backoff_base)
        self.assertEqual(parse_duration(self.default("retry.max_backoff")), retry.max_backoff)
        self.assertEqual(self.default("listen_path"), ingress.listen_path)
        self.assertEqual(parse_byte_size(self.default("max_body_size")), ingress.max_body_size)
        self.assertEqual(parse_duration(self.default("allowed_clock_skew")), ingress.allowed_clock_skew)
        self.assertEqual(self.default("require_key_id"), str(ingress.require_key_id).lower())

    def test_metric_names_match_code(self) -> None:
        with open(os.path.join(ROOT, "ductile", "metrics.py"), encoding="utf-8") as f:
            in_code = set(re.findall(r'"(ductile_[a-z_]+)"', f.read()))
        in_guide = set(re.findall(r"^\| `(ductile_[a-z_]+)` \|", self.guide, re.M))
        self.assertTrue(in_code)
        self.assertEqual(in_guide, in_code)
