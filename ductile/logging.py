"""
Structured logs: one JSON object per line, filtered at C{service.log_level}.

Use with twistd's C{--logger} option::

    twistd -n --logger=ductile.logging.json_observer ductile --config DIR

Lines go to standard output, or to the file named by C{DUCTILE_LOG_FILE}.
Every C{twisted.logger} keyword (job_id, peer, plugin, ...) becomes a
top-level JSON key; no component logs secrets, request bodies or signatures.
"""
from __future__ import annotations

import io
import os
import sys
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
)

_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "warning": LogLevel.warn,
           "error": LogLevel.error}
_level = LogLevel.info


def set_level(name: str) -> None:
    """Set the level for observers made afterwards (from C{service.log_level})."""
    global _level
    _level = _LEVELS.get(name.strip().lower(), LogLevel.info)


def json_observer(stream: IO[str] | None = None) -> ILogObserver:
    if stream is None:
        path = os.environ.get("DUCTILE_LOG_FILE", "-")
        stream = sys.stdout if path == "-" else io.open(path, "a", encoding="utf-8")
    return FilteringLogObserver(
        jsonFileLogObserver(stream, recordSeparator=""),
        [LogLevelFilterPredicate(defaultLogLevel=_level)],
    )
