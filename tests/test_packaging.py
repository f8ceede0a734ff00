"""
Packaging rules that a wrong layout would silently break.
"""
from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TwistedNamespaceTests(SynchronousTestCase):
    def test_no_init_under_twisted(self) -> None:
        """
        No C{__init__.py} may exist under C{twisted/}: installing one would
        replace Twisted's own C{twisted/plugins/__init__.py}.
        """
        found = []
        for dirpath, _dirs, files in os.walk(os.path.join(ROOT, "twisted")):
            found += [os.path.join(dirpath, f) for f in files if f == "__init__.py"]
        self.assertEqual(found, [])

    def test_dropin_names_ductile(self) -> None:
        """The dropin exposes a C{ductile} service maker that loads C{ductile.tap}."""
        ns: dict = {}
        path = os.path.join(ROOT, "twisted", "plugins", "ductile_plugin.py")
        with open(path) as f:
            exec(compile(f.read(), path, "exec"), ns)
        maker = ns["ductile"]
        self.assertEqual(maker.tapname, "ductile")
        self.assertEqual(maker.module, "ductile.tap")


class InstalledEntryPointsTests(SynchronousTestCase):
    def test_twistd_lists_ductile(self) -> None:
        """
        C{twistd --help} run from outside the checkout lists C{ductile}: the
        dropin is installed, not just present in the source tree.
        """
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        out = subprocess.run(
            [twistd, "--help"], capture_output=True, text=True, cwd="/", timeout=60
        )
        self.assertIn("ductile", out.stdout)
