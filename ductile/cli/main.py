"""
The C{ductile} command: noun-verb subcommands (C{config check}, C{relay send}, ...).

Each noun lives in its own module exposing C{register(subparsers)}; a verb's
handler takes the parsed arguments and returns the process exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ductile import __version__

#: Modules that contribute a noun, in the order they appear in C{--help}.
NOUN_MODULES = (
    "ductile.cli.config_cmd",
    "ductile.cli.relay_cmd",
    "ductile.cli.job_cmd",
    "ductile.cli.system_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ductile",
        description="Ductile automation runtime: inspect config, relay events, inspect jobs, reload a running instance.",
    )
    parser.add_argument("--version", action="version", version=f"ductile {__version__}")
    nouns = parser.add_subparsers(dest="noun", metavar="NOUN")
    nouns.required = True
    for name in NOUN_MODULES:
        importlib.import_module(name).register(nouns)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
