"""
The per-instance SQLite database, reached through one adbapi connection.

One connection (C{cp_max=1}) is the single writer SQLite wants; WAL lets the
CLI read the same file while the service runs.  Transactions are explicit
(C{isolation_level=None} and our own C{BEGIN IMMEDIATE}) so a batch of
writes commits exactly when L{ductile.store.writer.GroupCommitWriter} says.
"""
from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.enterprise import adbapi

from ductile.store.schema import create_connection_objects, migrate

_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}


def _pragmas(synchronous: str):
    mode = _SYNCHRONOUS[synchronous]

    def on_connect(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={mode}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")

    return on_connect


def _writer_setup(synchronous: str):
    pragmas = _pragmas(synchronous)

    def on_connect(conn: sqlite3.Connection) -> None:
        pragmas(conn)
        create_connection_objects(conn)

    return on_connect


def connect_blocking(path: str, synchronous: str = "full") -> sqlite3.Connection:
    """
    A plain connection with the same settings, for the CLI (which runs no
    reactor) and for migration before the pool starts.
    """
    conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    _pragmas(synchronous)(conn)
    conn.row_factory = sqlite3.Row
    return conn


def prepare_database(path: str, synchronous: str = "full") -> None:
    """Create the directory and file if needed and bring the schema up to date."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    conn = connect_blocking(path, synchronous)
    try:
        migrate(conn)
    finally:
        conn.close()


def open_pool(path: str, synchronous: str = "full", **kw: Any) -> adbapi.ConnectionPool:
    """
    The service's connection pool.  Call L{prepare_database} first.

    The pool starts itself when the reactor runs; close it on service stop.
    """
    if synchronous not in _SYNCHRONOUS:
        raise ValueError(f"state.synchronous must be full or normal, not {synchronous!r}")
    return adbapi.ConnectionPool(
        "sqlite3",
        path,
        check_same_thread=False,
        isolation_level=None,
        timeout=5.0,
        cp_min=1,
        cp_max=1,
        cp_openfun=_writer_setup(synchronous),
        **kw,
    )
