"""Trace settings: Triton's trace extension keys, validated, global and per model."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from nereid.server.errors import InvalidArgument

LEVELS = ("OFF", "TIMESTAMPS", "TENSORS")
MODES = ("triton", "opentelemetry")
#: Keys of ``GET|POST v2[/models/<m>]/trace/setting`` and of ``--trace-config``.
KEYS = ("trace_level", "trace_rate", "trace_count", "log_frequency", "trace_file", "trace_mode")


@dataclass(frozen=True, slots=True)
class TraceSettings:
    """One scope's settings. ``trace_rate`` N samples one request in N; ``trace_count`` -1 is unlimited."""

    trace_level: tuple[str, ...] = ("OFF",)
    trace_rate: int = 1000
    trace_count: int = -1
    log_frequency: int = 0
    trace_file: str = ""
    trace_mode: str = "triton"

    @property
    def enabled(self) -> bool:
        return "OFF" not in self.trace_level and self.trace_count != 0

    def to_wire(self) -> dict[str, str | list[str]]:
        """As Triton answers: every value a string, the level a list."""
        return {
            "trace_level": list(self.trace_level),
            "trace_rate": str(self.trace_rate),
            "trace_count": str(self.trace_count),
            "log_frequency": str(self.log_frequency),
            "trace_file": self.trace_file,
            "trace_mode": self.trace_mode,
        }


def parse_updates(values: dict[str, Any], allowed_dir: Path | None) -> dict[str, Any]:
    """Validate ``{key: value | None}`` from the API or flags; None means "back to the global value".

    Every problem is an InvalidArgument naming the key; nothing is applied unless all keys pass.
    """
    updates: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in KEYS:
            raise InvalidArgument(f"unknown trace setting '{key}'; known: {', '.join(KEYS)}")
        updates[key] = None if raw is None else _parse(key, raw, allowed_dir)
    return updates


def _parse(key: str, raw: Any, allowed_dir: Path | None) -> Any:
    if key == "trace_level":
        levels = raw if isinstance(raw, list) else [raw]
        if not levels or not all(isinstance(v, str) for v in levels):
            raise InvalidArgument("trace_level must be a list of OFF, TIMESTAMPS or TENSORS")
        upper = tuple(v.strip().upper() for v in levels)
        bad = [v for v in upper if v not in LEVELS]
        if bad:
            raise InvalidArgument(f"unknown trace_level '{bad[0]}'; use OFF, TIMESTAMPS or TENSORS")
        if "OFF" in upper and len(upper) > 1:
            raise InvalidArgument("trace_level OFF cannot be combined with other levels")
        return upper
    text = _one(key, raw)
    if key == "trace_file":
        return _trace_file(text, allowed_dir)
    if key == "trace_mode":
        if text not in MODES:
            raise InvalidArgument(f"unknown trace_mode '{text}'; use triton or opentelemetry")
        return text
    try:
        number = int(text)
    except ValueError:
        raise InvalidArgument(f"{key} must be an integer, got '{text}'") from None
    if key == "trace_rate" and number <= 0:
        raise InvalidArgument(f"trace_rate must be a positive integer (1 = every request), got {number}")
    if key == "trace_count" and number < -1:
        raise InvalidArgument(f"trace_count must be -1 (unlimited) or at least 0, got {number}")
    if key == "log_frequency" and number < 0:
        raise InvalidArgument(f"log_frequency must be 0 or positive, got {number}")
    return number


def _one(key: str, raw: Any) -> str:
    if isinstance(raw, list):
        if len(raw) != 1:
            raise InvalidArgument(f"{key} takes exactly one value")
        raw = raw[0]
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise InvalidArgument(f"{key} must be a string")
    return str(raw).strip()


def _trace_file(text: str, allowed_dir: Path | None) -> str:
    """Only a file inside the folder the operator allowed at start-up (CVE-2024-0087's lesson)."""
    if not text:
        return ""
    if allowed_dir is None:
        raise InvalidArgument("trace_file cannot be set: the server was started without a trace folder")
    path = Path(text) if Path(text).is_absolute() else allowed_dir / text
    resolved, root = path.resolve(), allowed_dir.resolve()
    if resolved.parent != root and root not in resolved.parents:
        raise InvalidArgument(f"trace_file must be inside the trace folder {root}")
    return str(resolved)


def apply(base: TraceSettings, updates: dict[str, Any], defaults: TraceSettings) -> TraceSettings:
    """``base`` with ``updates``; a None value restores that key from ``defaults``."""
    names = {f.name for f in fields(TraceSettings)}
    values = {k: (getattr(defaults, k) if v is None else v) for k, v in updates.items() if k in names}
    return replace(base, **values)


def parse_flags(flags: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Triton's ``--trace-config [mode,]key=value`` into (settings updates, exporter options).

    Keys: ``level``, ``rate``, ``count``, ``log_frequency``, ``file``, ``mode``, ``dir`` (the folder the
    trace file may be set to at run time), and ``opentelemetry,url|resource|bsp_*`` for the exporter.
    """
    updates: dict[str, Any] = {}
    exporter: dict[str, str] = {}
    for flag in flags:
        scope, _, pair = flag.rpartition(",")
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep:
            if key in MODES and not scope:  # "--trace-config mode" shorthand is Triton's mode=...
                updates["trace_mode"] = key
                continue
            raise InvalidArgument(f"--trace-config expects [mode,]key=value, got '{flag}'")
        if scope == "opentelemetry" or key in ("url", "resource") or key.startswith("bsp_"):
            exporter[key] = value
        elif key == "dir":
            exporter["dir"] = value
        elif key in ("level", "rate", "count", "log_frequency", "file", "mode"):
            updates["trace_" + key if key != "log_frequency" else key] = value
        else:
            raise InvalidArgument(f"unknown --trace-config key '{key}'")
    return updates, exporter
