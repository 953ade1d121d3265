"""Triton's logging extension: the server's log settings, read and changed at run time.

One process-wide :data:`LOG_SETTINGS` holds ``log_file, log_info, log_warning, log_error,
log_verbose_level, log_format`` (Triton's names and types). ``GET/POST /v2/logging`` and the
``LogSettings`` RPC both call :meth:`LogSettings.update`, which checks every value before it
changes any, so a bad request changes nothing.

``log_file`` cannot be changed over the network: a writable path chosen by a client is a write
anywhere on disk (Triton's CVE-2024-0087). Only the value the server started with is accepted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from nereid.server.errors import InvalidArgument
from nereid.server.logs import FORMATS, formatter_for

BOOLS = ("log_info", "log_warning", "log_error")
KEYS = ("log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format")
_LEVELS = {"log_info": logging.INFO, "log_warning": logging.WARNING, "log_error": logging.ERROR}


class _LevelSwitch(logging.Filter):
    """Drops the records of a level whose ``log_<level>`` setting is off."""

    def __init__(self) -> None:
        super().__init__()
        self.off: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        level = record.levelno
        if level >= logging.ERROR:
            return logging.ERROR not in self.off
        if level >= logging.WARNING:
            return logging.WARNING not in self.off
        if level >= logging.INFO:
            return logging.INFO not in self.off
        return True


@dataclass
class LogSettings:
    """The current settings; :meth:`apply` puts them on the root logger's handlers."""

    log_file: str = ""
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "default"

    def __post_init__(self) -> None:
        self._switch = _LevelSwitch()

    def to_wire(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in KEYS}

    def update(self, values: dict[str, Any]) -> dict[str, Any]:
        """Check every value in ``values`` (``None`` leaves a setting as it is), then apply them all."""
        changes = {
            key: _checked(key, value, self.log_file) for key, value in values.items() if value is not None
        }
        for key, value in changes.items():
            setattr(self, key, value)
        self.apply()
        return self.to_wire()

    def apply(self) -> None:
        root = logging.getLogger()
        root.setLevel(logging.DEBUG if self.log_verbose_level > 0 else logging.INFO)
        self._switch.off = {level for key, level in _LEVELS.items() if not getattr(self, key)}
        for handler in root.handlers:
            if self._switch not in handler.filters:
                handler.addFilter(self._switch)
            if getattr(handler, "nereid_format", None) not in (None, self.log_format):
                handler.setFormatter(formatter_for(self.log_format))
                handler.nereid_format = self.log_format  # type: ignore[attr-defined]


def _checked(key: str, value: Any, log_file: str) -> Any:
    """``value`` for setting ``key`` in its canonical form, or InvalidArgument naming the setting."""
    if key in BOOLS:
        if not isinstance(value, bool):
            raise InvalidArgument(f"expect a boolean for the '{key}' log setting, got {value!r}")
        return value
    if key == "log_verbose_level":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(
                f"expect an integer >= 0 for the 'log_verbose_level' log setting, got {value!r}"
            )
        return value
    if key == "log_format":
        if not isinstance(value, str) or value not in FORMATS:
            raise InvalidArgument(
                f"invalid argument for the 'log_format' log setting, got {value!r}; "
                f"expected one of {', '.join(FORMATS)}"
            )
        return "default" if value == "text" else value
    if key == "log_file":
        if not isinstance(value, str):
            raise InvalidArgument(f"expect a string for the 'log_file' log setting, got {value!r}")
        if value != log_file:
            raise InvalidArgument(
                "log file location can not be updated through network protocol "
                "('log_file' is fixed when the server starts)"
            )
        return value
    raise InvalidArgument(f"unknown log setting '{key}'; the settings are {', '.join(KEYS)}")


LOG_SETTINGS = LogSettings()
