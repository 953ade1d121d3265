"""Server settings: one validated schema, filled from flags (Triton's names) or NEREID_* variables."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

#: Largest request body (HTTP, also after decompression) or message (gRPC) by default.
DEFAULT_MAX_INPUT_SIZE = 64 * 1024 * 1024


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


@dataclass
class Settings:
    """Every knob of ``nereid serve``; each field is ``--flag-name`` and ``NEREID_FLAG_NAME``."""

    model_repository: list[Path] = field(default_factory=list)
    #: Address every port binds to.
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    #: Ready only when every model version is READY (Triton's default).
    strict_readiness: bool = True
    #: Exit at start-up when any model fails to load (Triton's default).
    exit_on_error: bool = True
    log_verbose: int = 0
    #: text (Triton-like lines, messages escaped), ISO8601, or json (one object a line).
    log_format: str = "text"
    #: Log every HTTP request (method, path, status, duration, request and trace id).
    log_access: bool = False
    #: Triton's ``--trace-config [mode,]key=value`` (repeatable): level, rate, count, file, dir, ...
    trace_config: list[str] = field(default_factory=list)
    #: Largest HTTP request body, also after decompression.
    http_max_input_size: int = DEFAULT_MAX_INPUT_SIZE
    #: Largest gRPC message received.
    grpc_max_input_size: int = DEFAULT_MAX_INPUT_SIZE
    #: none: load all at start-up; explicit: only --load-model, then the load/unload API.
    model_control_mode: str = "none"
    load_model: list[str] = field(default_factory=list)
    model_load_thread_count: int = 4
    #: Seconds to let in-flight requests finish on shutdown.
    exit_timeout_secs: int = 30

    def validate(self) -> None:
        if not self.model_repository:
            raise ValueError("--model-repository is required")
        for port in (self.http_port, self.grpc_port, self.metrics_port):
            if not 0 <= port <= 65535:
                raise ValueError(f"port {port} is outside 0..65535")
        if self.model_control_mode not in ("none", "explicit"):
            raise ValueError(
                f"--model-control-mode must be 'none' or 'explicit', got '{self.model_control_mode}'"
            )
        if self.http_max_input_size <= 0 or self.grpc_max_input_size <= 0:
            raise ValueError("input size limits must be positive")
        if self.log_format not in ("text", "default", "ISO8601", "json"):
            raise ValueError(f"--log-format must be text, ISO8601 or json, got '{self.log_format}'")
        from nereid.server.tracing.manager import check_flags

        check_flags(self.trace_config)


_LISTS = {"model_repository": Path, "load_model": str, "trace_config": str}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nereid serve", description="Serve a model repository")
    defaults = Settings()
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        env = os.environ.get("NEREID_" + f.name.upper())
        if f.name in _LISTS:
            default: Any = [_LISTS[f.name](v) for v in env.split(",")] if env else []
            parser.add_argument(flag, action="append", type=_LISTS[f.name], default=None, dest=f.name)
            parser.set_defaults(**{f.name: default})
            continue
        value = getattr(defaults, f.name)
        kind = _bool if isinstance(value, bool) else type(value)
        parser.add_argument(flag, type=kind, default=kind(env) if env is not None else value, dest=f.name)
    return parser


def parse_settings(argv: list[str]) -> Settings:
    namespace = build_parser().parse_args(argv)
    settings = Settings(**vars(namespace))
    settings.validate()
    return settings
