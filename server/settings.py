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
    # ---- security (README "Security") -----------------------------------------------------------
    #: gRPC bind address ("" = --http-address).
    grpc_address: str = ""
    #: Metrics bind address ("" = --http-address); 127.0.0.1 keeps metrics off the network.
    metrics_address: str = ""
    #: One API key with every scope (prefer NEREID_API_KEY to the flag: flags show in `ps`).
    api_key: str = ""
    #: JSON file of API keys with scopes and limits; re-read when it changes.
    api_key_file: str = ""
    #: Triton's restricted APIs: <api>[,<api>...]:<header>=<value>, repeatable.
    http_restricted_api: list[str] = field(default_factory=list)
    #: The same for gRPC; the metadata key is triton-grpc-protocol-<header>.
    grpc_restricted_protocol: list[str] = field(default_factory=list)
    #: Requests per second per client (API key, or address without keys); 0 = no limit.
    request_rate_limit: float = 0.0
    #: Requests a client may send at once (0 = max(1, --request-rate-limit)).
    request_rate_burst: float = 0.0
    #: LLM tokens per minute per client, charged at admission (prompt bytes / 4 + max_tokens).
    token_rate_limit: float = 0.0
    #: Serve HTTP (with the OpenAI API) over TLS with --http-server-cert/--http-server-key.
    http_use_ssl: bool = False
    #: Also require client certificates signed by --http-root-cert (mTLS).
    http_use_ssl_mutual: bool = False
    http_server_cert: str = ""
    http_server_key: str = ""
    http_root_cert: str = ""
    #: Serve gRPC over TLS with --grpc-server-cert/--grpc-server-key (Triton's flags).
    grpc_use_ssl: bool = False
    #: Also require client certificates signed by --grpc-root-cert (mTLS).
    grpc_use_ssl_mutual: bool = False
    grpc_server_cert: str = ""
    grpc_server_key: str = ""
    grpc_root_cert: str = ""

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
        self.validate_security()

    def validate_security(self) -> None:
        for name in ("http", "grpc"):
            ssl, mutual = getattr(self, f"{name}_use_ssl"), getattr(self, f"{name}_use_ssl_mutual")
            if (ssl or mutual) and not (
                getattr(self, f"{name}_server_cert") and getattr(self, f"{name}_server_key")
            ):
                raise ValueError(f"--{name}-use-ssl needs --{name}-server-cert and --{name}-server-key")
            if mutual and not getattr(self, f"{name}_root_cert"):
                raise ValueError(f"--{name}-use-ssl-mutual needs --{name}-root-cert")
        if min(self.request_rate_limit, self.request_rate_burst, self.token_rate_limit) < 0:
            raise ValueError("rate limits must not be negative")
        from nereid.server.auth import RestrictedApis, key_store_from

        RestrictedApis.parse(self.http_restricted_api)
        RestrictedApis.parse(self.grpc_restricted_protocol, grpc=True)
        key_store_from(self.api_key_file, self.api_key)


_LISTS = {
    "model_repository": Path,
    "load_model": str,
    "http_restricted_api": str,
    "grpc_restricted_protocol": str,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nereid serve", description="Serve a model repository")
    defaults = Settings()
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        env = os.environ.get("NEREID_" + f.name.upper())
        if f.name in _LISTS:
            # Restriction specs hold commas themselves, so their variables separate with ";".
            sep = ";" if "restricted" in f.name else ","
            default: Any = [_LISTS[f.name](v) for v in env.split(sep)] if env else []
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
