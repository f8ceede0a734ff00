"""
Typed access to one mapping of the merged config, reporting bad values with
their file and key path instead of raising.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import attrs

from ductile.config.durations import DURATION_EXPECTED, parse_duration
from ductile.config.report import Report
from ductile.config.sizes import SIZE_EXPECTED, parse_byte_size
from ductile.config.yamlsafe import scalar_text

T = TypeVar("T")

_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}


@attrs.define
class At:
    """
    A mapping in the config and where it is: C{prefix} is its key path as
    shown in messages (C{instances[0]}); C{origin(path + (key,))} gives the
    file that set one of its keys.
    Each getter returns C{default} for a missing or C{null} key, and also
    after reporting an invalid value, so building can go on.
    """

    data: dict[str, Any]
    prefix: str
    path: tuple[str, ...]
    origin: Callable[[tuple[str, ...]], str]
    report: Report

    @classmethod
    def in_file(cls, data: Any, prefix: str, file: str, report: Report) -> "At":
        """A mapping that came whole from one file (a list entry)."""
        return cls(data if isinstance(data, dict) else {}, prefix, (), lambda _p: file, report)

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def file(self, name: str = "") -> str:
        return self.origin(self.path + ((name,) if name else ()))

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def raw(self, name: str, default: Any = None) -> Any:
        value = self.data.get(name)
        return default if value is None else value

    def invalid(self, name: str, value: Any, expected: str) -> None:
        self.report.invalid(self.file(name), self.key(name), value, expected)

    def error(self, name: str, message: str) -> None:
        self.report.error(self.file(name), self.key(name), message)

    def warn(self, name: str, message: str) -> None:
        self.report.warn(self.file(name), self.key(name), message)

    def _convert(self, name: str, default: T, convert: Callable[[Any], T], expected: str) -> T:
        value = self.data.get(name)
        if value is None:
            return default
        try:
            return convert(value)
        except (ValueError, TypeError):
            self.invalid(name, value, expected)
            return default

    def text(self, name: str, default: str = "", *, required: bool = False) -> str:
        value = self.data.get(name)
        if value is None:
            if required:
                self.error(name, "is required")
            return default
        if isinstance(value, (dict, list)):
            self.invalid(name, value, "expected a string")
            return default
        text = scalar_text(value).strip()
        if required and not text:
            self.error(name, "is required and must not be empty")
        return text

    def flag(self, name: str, default: bool) -> bool:
        def convert(v: Any) -> bool:
            if isinstance(v, bool):
                return v
            if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
                return v.strip().lower() in _TRUE
            raise ValueError(v)

        return self._convert(name, default, convert, "expected true or false")

    def whole(self, name: str, default: Any, *, minimum: int | None = None) -> Any:
        def convert(v: Any) -> int:
            if isinstance(v, bool):
                raise ValueError(v)
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if not isinstance(v, int):
                raise ValueError(v)
            if minimum is not None and v < minimum:
                raise ValueError(v)
            return v

        expected = "expected a whole number" + (f" >= {minimum}" if minimum is not None else "")
        return self._convert(name, default, convert, expected)

    def duration(
        self, name: str, default: float, *, positive: bool = False, any_sign: bool = False
    ) -> float:
        """
        A Go duration in seconds; negative values are refused unless
        C{any_sign}, zero too when C{positive}.
        """
        seconds = self._convert(name, None, parse_duration, f"expected {DURATION_EXPECTED}")
        if seconds is None:
            return default
        if positive and seconds <= 0:
            self.invalid(name, self.data.get(name), f"expected a positive {DURATION_EXPECTED}")
            return default
        if seconds < 0 and not any_sign:
            self.invalid(name, self.data.get(name), f"expected a non-negative {DURATION_EXPECTED}")
            return default
        return seconds

    def size(self, name: str, default: int) -> int:
        return self._convert(name, default, parse_byte_size, f"expected {SIZE_EXPECTED}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value.lower() not in choices:
            self.invalid(name, value, "expected one of " + ", ".join(choices))
            return default
        return value.lower()

    def str_list(self, name: str) -> tuple[str, ...]:
        value = self.data.get(name)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.invalid(name, value, "expected a list of strings")
            return ()
        out = []
        for i, item in enumerate(value):
            if isinstance(item, (dict, list)) or item is None:
                self.report.invalid(self.file(name), f"{self.key(name)}[{i}]", item, "expected a string")
                continue
            out.append(scalar_text(item).strip())
        return tuple(out)

    def mapping(self, name: str) -> dict[str, Any] | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.invalid(name, value, "expected a mapping of keys")
            return None
        return value

    def sub(self, name: str) -> "At":
        """The child mapping C{name} (empty when missing or invalid)."""
        data = self.mapping(name) or {}
        return At(data, self.key(name), self.path + (name,), self.origin, self.report)
