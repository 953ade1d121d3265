"""Server settings: one validated schema, filled from flags (Triton's names) or NEREID_* variables.

Each field's ``help`` metadata is the text ``nereid serve --help`` prints, followed by the
field's default and its ``NEREID_*`` variable. Flags win over variables, variables over defaults.
"""

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


def _help(text: str) -> Any:
    return {"help": text}


@dataclass
class Settings:
    """Every knob of ``nereid serve``; each field is ``--flag-name`` and ``NEREID_FLAG_NAME``."""

    model_repository: list[Path] = field(
        default_factory=list,
        metadata=_help(
            "Model repository folder (required); repeat the flag, or separate folders with commas "
            "in the variable. Also spelled --model-store (Triton) and --model-dir (KServe)."
        ),
    )
    http_address: str = field(default="0.0.0.0", metadata=_help("Address every port binds to."))
    http_port: int = field(default=8000, metadata=_help("KServe v2 HTTP (and OpenAI) port; 0 picks one."))
    grpc_port: int = field(default=8001, metadata=_help("KServe v2 gRPC port (h2c); 0 picks one."))
    metrics_port: int = field(default=8002, metadata=_help("Prometheus /metrics port; 0 picks one."))
    allow_http: bool = field(default=True, metadata=_help("Serve HTTP."))
    allow_grpc: bool = field(default=True, metadata=_help("Serve gRPC."))
    allow_metrics: bool = field(default=True, metadata=_help("Serve /metrics."))
    allow_client_shm: bool = field(
        default=False,
        metadata=_help(
            "Let clients register /dev/shm regions and pass tensors through them (Triton's system "
            "shared memory extension; off by default, as in Triton)."
        ),
    )
    strict_readiness: bool = field(
        default=True,
        metadata=_help("Ready only when every model version is READY (Triton's default)."),
    )
    exit_on_error: bool = field(
        default=True, metadata=_help("Exit at start-up when any model fails to load (Triton's default).")
    )
    log_verbose: int = field(default=0, metadata=_help("Verbose (debug) logging when above 0."))
    log_format: str = field(
        default="text",
        metadata=_help("text (Triton-like lines, messages escaped), ISO8601, or json (one object a line)."),
    )
    log_access: bool = field(
        default=False,
        metadata=_help("Log every HTTP request (method, path, status, duration, request and trace id)."),
    )
    trace_config: list[str] = field(
        default_factory=list,
        metadata=_help(
            "Triton's --trace-config [mode,]key=value (repeatable): level, rate, count, file, dir, ..."
        ),
    )
    http_max_input_size: int = field(
        default=DEFAULT_MAX_INPUT_SIZE,
        metadata=_help("Largest HTTP request body in bytes, also after decompression."),
    )
    grpc_max_input_size: int = field(
        default=DEFAULT_MAX_INPUT_SIZE, metadata=_help("Largest gRPC message received, in bytes.")
    )
    http_header_timeout_secs: float = field(
        default=10.0,
        metadata=_help(
            "Seconds a new HTTP connection, or a request that has begun, gets to send all its headers."
        ),
    )
    model_control_mode: str = field(
        default="none",
        metadata=_help(
            "none: load every model at start-up; poll: also apply repository changes every "
            "--repository-poll-secs; explicit: only --load-model ('*': all), then the load/unload API."
        ),
    )
    repository_poll_secs: float = field(
        default=15.0, metadata=_help("Seconds between repository scans in poll mode.")
    )
    model_memory_budget: int = field(
        default=0,
        metadata=_help(
            "Bytes all loaded models may take (estimated from their files; 0: no limit). Loading past it "
            "evicts the least recently used idle model, which its next request loads again."
        ),
    )
    cache_config: list[str] = field(
        default_factory=list,
        metadata=_help(
            "Triton's response cache: local,size=BYTES (one LRU shared by the models whose config sets "
            "response_cache { enable: true }); the variable separates values with ';'."
        ),
    )
    response_cache_byte_size: int = field(
        default=0, metadata=_help("Triton's deprecated spelling of --cache-config local,size=BYTES.")
    )
    load_model: list[str] = field(
        default_factory=list,
        metadata=_help("Model to load at start-up in explicit mode ('*' for all); repeatable."),
    )
    model_load_thread_count: int = field(default=4, metadata=_help("Models loaded in parallel."))
    rate_limit: str = field(
        default="off",
        metadata=_help(
            "Triton's rate limiter: execution_count runs a model instance only when the resources its "
            "instance_group.rate_limiter lists are free; off runs instances as soon as they have work."
        ),
    )
    rate_limit_resource: list[str] = field(
        default_factory=list,
        metadata=_help(
            "Copies of a rate-limiter resource, <name>:<count>[:<device>] (no device: every device and "
            "the global resource); repeatable. Default: the most any loaded instance asks for."
        ),
    )
    model_name: str = field(
        default="",
        metadata=_help(
            "Serve a repository folder that is itself one model's folder (config.pbtxt and version "
            "folders at its root) under this name: KServe's --model_name={{.Name}} when storageUri "
            "points at a single model. Unset: folder names are model names."
        ),
    )
    drain_delay_secs: float = field(
        default=2.0,
        metadata=_help(
            "On SIGTERM, readiness turns false at once but new connections and requests are still "
            "served for this long, so load balancers (and Kubernetes endpoints) stop sending first."
        ),
    )
    exit_timeout_secs: int = field(
        default=30,
        metadata=_help(
            "After the drain delay, in-flight requests and streams get this long to finish; then "
            "the process exits whatever is still running (a second SIGTERM or SIGINT exits at once)."
        ),
    )

    # ---- security (README "Security") ----------------------------------------------------------
    grpc_address: str = field(default="", metadata=_help("gRPC bind address (empty: --http-address)."))
    metrics_address: str = field(
        default="",
        metadata=_help(
            "Metrics bind address (empty: --http-address); 127.0.0.1 keeps metrics off the network."
        ),
    )
    api_key: str = field(
        default="",
        metadata=_help("One API key with every scope (prefer NEREID_API_KEY: flags show in `ps`)."),
    )
    api_key_file: str = field(
        default="", metadata=_help("JSON file of API keys with scopes and limits; re-read when it changes.")
    )
    http_restricted_api: list[str] = field(
        default_factory=list,
        metadata=_help(
            "Triton's restricted APIs: <api>[,<api>...]:<header>=<value>; repeatable (the variable separates with ';')."
        ),
    )
    grpc_restricted_protocol: list[str] = field(
        default_factory=list,
        metadata=_help("The same for gRPC; the metadata key is triton-grpc-protocol-<header>; repeatable."),
    )
    request_rate_limit: float = field(
        default=0.0,
        metadata=_help("Requests per second per client (API key, or address without keys); 0: no limit."),
    )
    request_rate_burst: float = field(
        default=0.0, metadata=_help("Requests a client may send at once (0: max(1, --request-rate-limit)).")
    )
    token_rate_limit: float = field(
        default=0.0,
        metadata=_help(
            "LLM tokens per minute per client, charged at admission (prompt bytes / 4 + max_tokens)."
        ),
    )
    http_use_ssl: bool = field(
        default=False,
        metadata=_help(
            "Serve HTTP (with the OpenAI API) over TLS with --http-server-cert/--http-server-key."
        ),
    )
    http_use_ssl_mutual: bool = field(
        default=False, metadata=_help("Also require client certificates signed by --http-root-cert (mTLS).")
    )
    http_server_cert: str = field(default="", metadata=_help("PEM certificate of the HTTP server."))
    http_server_key: str = field(default="", metadata=_help("PEM private key of the HTTP server."))
    http_root_cert: str = field(
        default="", metadata=_help("PEM CA that signs HTTP client certificates (mTLS).")
    )
    grpc_use_ssl: bool = field(
        default=False,
        metadata=_help("Serve gRPC over TLS with --grpc-server-cert/--grpc-server-key (Triton's flags)."),
    )
    grpc_use_ssl_mutual: bool = field(
        default=False, metadata=_help("Also require client certificates signed by --grpc-root-cert (mTLS).")
    )
    grpc_server_cert: str = field(default="", metadata=_help("PEM certificate of the gRPC server."))
    grpc_server_key: str = field(default="", metadata=_help("PEM private key of the gRPC server."))
    grpc_root_cert: str = field(
        default="", metadata=_help("PEM CA that signs gRPC client certificates (mTLS).")
    )

    def validate(self) -> None:
        if not self.model_repository:
            raise ValueError("--model-repository is required")
        for port in (self.http_port, self.grpc_port, self.metrics_port):
            if not 0 <= port <= 65535:
                raise ValueError(f"port {port} is outside 0..65535")
        if self.model_control_mode not in ("none", "poll", "explicit"):
            raise ValueError(
                f"--model-control-mode must be 'none', 'poll' or 'explicit', got '{self.model_control_mode}'"
            )
        if self.repository_poll_secs <= 0:
            raise ValueError("--repository-poll-secs must be positive")
        if self.model_memory_budget < 0:
            raise ValueError("--model-memory-budget must be >= 0 bytes")
        if self.http_max_input_size <= 0 or self.grpc_max_input_size <= 0:
            raise ValueError("input size limits must be positive")
        if self.drain_delay_secs < 0 or self.exit_timeout_secs < 0:
            raise ValueError("--drain-delay-secs and --exit-timeout-secs must not be negative")
        if self.model_name and len(self.model_repository) != 1:
            raise ValueError("--model-name serves exactly one --model-repository folder")
        if self.http_header_timeout_secs <= 0:
            raise ValueError("--http-header-timeout-secs must be positive")
        if self.log_format not in ("text", "default", "ISO8601", "json"):
            raise ValueError(f"--log-format must be text, ISO8601 or json, got '{self.log_format}'")
        if self.log_verbose < 0:
            raise ValueError(f"--log-verbose must not be negative, got {self.log_verbose}")
        from nereid.server.tracing.manager import check_flags

        check_flags(self.trace_config)
        self.response_cache_bytes()
        from nereid.server.resource_limiter import resource_limiter

        resource_limiter(self.rate_limit, self.rate_limit_resource)
        self.validate_security()

    def response_cache_bytes(self) -> int:
        """The response cache's size from ``--cache-config`` (0: none); raises ValueError."""
        from nereid.server.response_cache import parse_cache_config

        if self.response_cache_byte_size < 0:
            raise ValueError("--response-cache-byte-size must be >= 0 bytes")
        # As in Triton, the old flag is --cache-config local,size=N under the hood.
        return parse_cache_config(self.cache_config) or self.response_cache_byte_size

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
    "trace_config": str,
    "cache_config": str,
    "rate_limit_resource": str,
}
# Variables of lists whose values hold commas themselves separate them with ";".
_SEMICOLON_LISTS = ("http_restricted_api", "grpc_restricted_protocol", "cache_config")
# Other spellings users bring from Triton and KServe runtimes.
_ALIASES = {"--model-store": "--model-repository", "--model-dir": "--model-repository"}
EPILOG = (
    "Flags take precedence over NEREID_* variables. Underscore spellings (--http_port, as KServe "
    "runtimes pass them) are accepted for every flag. Booleans take true/false, 1/0, yes/no, on/off."
)


def env_name(name: str) -> str:
    return "NEREID_" + name.upper()


def _from_env(name: str, kind: Any) -> Any:
    raw = os.environ.get(env_name(name))
    if raw is None:
        return None
    try:
        if name in _LISTS:
            return [kind(v) for v in raw.split(";" if name in _SEMICOLON_LISTS else ",") if v]
        return kind(raw)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise ValueError(f"{env_name(name)}={raw!r}: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nereid serve",
        description="Serve a model repository over KServe v2 HTTP and gRPC, with Prometheus metrics.",
        epilog=EPILOG,
    )
    defaults = Settings()
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        kind = _LISTS.get(f.name) or (_bool if isinstance(value, bool) else type(value))
        env = _from_env(f.name, kind)
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        text = f"{f.metadata['help']} (default: {shown if shown != '' else 'unset'}; env {env_name(f.name)})"
        metavar = f.name.split("_")[-1].upper() if f.name in _LISTS else None
        if f.name in _LISTS:
            parser.add_argument(flag, action="append", type=kind, default=None, dest=f.name, help=text)
            parser.set_defaults(**{f.name: env if env is not None else []})
            continue
        parser.add_argument(
            flag,
            type=kind,
            default=env if env is not None else value,
            dest=f.name,
            help=text,
            metavar=metavar or ("BOOL" if kind is _bool else None),
        )
    return parser


def normalise_argv(argv: list[str]) -> list[str]:
    """``--http_port=1`` → ``--http-port=1``, ``--model-store`` → ``--model-repository``."""
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, sep, value = token.partition("=")
            name = name.replace("_", "-")
            token = _ALIASES.get(name, name) + sep + value
        out.append(token)
    return out


def parse_settings(argv: list[str]) -> Settings:
    namespace = build_parser().parse_args(normalise_argv(argv))
    settings = Settings(**vars(namespace))
    settings.validate()
    return settings
