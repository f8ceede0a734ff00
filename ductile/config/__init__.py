"""
Configuration: the loader (L{load_config}) and the frozen values it returns
(L{ductile.config.models}).
"""
from __future__ import annotations

from ductile.config.durations import parse_duration, parse_every
from ductile.config.errors import ConfigError
from ductile.config.loader import load_config, locate_config
from ductile.config.sizes import parse_byte_size

__all__ = [
    "ConfigError",
    "load_config",
    "locate_config",
    "parse_byte_size",
    "parse_duration",
    "parse_every",
]
