"""Who may call what: API groups, API keys with scopes, and Triton's restricted APIs.

Transport-neutral. A front-end names the API group and model of a call and hands over its
headers (HTTP headers or gRPC metadata, names in lower case); :meth:`Authorizer.authorize`
answers with the calling :class:`Principal` or raises :class:`~nereid.server.errors.Unauthenticated`,
:class:`~nereid.server.errors.PermissionDenied` (or, for a Triton restriction over gRPC,
UNAVAILABLE as Triton does). Messages never say whether a key exists.

Keys come from ``--api-key`` / ``NEREID_API_KEY`` (one key with every scope) and from a JSON
key file that is re-read when its mtime changes (checked at most once a second)::

    {"keys": [{"name": "shop", "key": "...", "groups": ["inference", "metadata"],
               "models": ["resnet*"], "requests_per_second": 50, "burst": 100,
               "tokens_per_minute": 20000}]}

``key_sha256`` (hex) may replace ``key`` so that the file holds no secret. Keys are compared as
SHA-256 digests with :func:`hmac.compare_digest` against every stored key, without an early exit.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from nereid.server.errors import PermissionDenied, ServingError, Unauthenticated, Unavailable

log = logging.getLogger(__name__)


class ApiGroup(StrEnum):
    """Triton's API groups (the names of ``--http-restricted-api``), also the scopes of a key."""

    HEALTH = "health"
    METADATA = "metadata"
    INFERENCE = "inference"
    SHARED_MEMORY = "shared-memory"
    MODEL_CONFIG = "model-config"
    #: Repository index and model control (load / unload).
    MODEL_REPOSITORY = "model-repository"
    STATISTICS = "statistics"
    TRACE = "trace"
    LOGGING = "logging"


ALL_GROUPS = frozenset(ApiGroup)
#: What a key in the key file may do when it names no groups.
DEFAULT_KEY_GROUPS = frozenset({ApiGroup.INFERENCE, ApiGroup.METADATA})
# Kept for every message so that an unknown key and a missing one read the same.
_UNAUTHENTICATED = "missing or invalid API key"
RELOAD_CHECK_S = 1.0


def parse_group(name: str) -> ApiGroup:
    try:
        return ApiGroup(name.strip())
    except ValueError:
        raise ValueError(f"unknown API group '{name.strip()}'") from None


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a key's name and scopes, or an anonymous client when auth is off.

    ``models`` holds exact names and ``fnmatch`` patterns; ``("*",)`` allows every model.
    ``rate`` overrides the server's default limits for this key (None keeps the default).
    """

    name: str
    groups: frozenset[ApiGroup] = ALL_GROUPS
    models: tuple[str, ...] = ("*",)
    authenticated: bool = False
    rate: RateOverride | None = None
    _exact: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def allows_model(self, model: str) -> bool:
        if not model or model in self._exact or self.models == ("*",):
            return True
        return any(
            fnmatch.fnmatchcase(model, pattern) for pattern in self.models if pattern not in self._exact
        )


@dataclass(frozen=True, slots=True)
class RateOverride:
    """Per-key limits from the key file (0 turns a limit off for this key)."""

    requests_per_second: float | None = None
    burst: float | None = None
    tokens_per_minute: float | None = None


ANONYMOUS = Principal("anonymous")


def _principal(
    name: str, groups: frozenset[ApiGroup], models: tuple[str, ...], rate: RateOverride | None
) -> Principal:
    exact = frozenset(m for m in models if not any(c in m for c in "*?["))
    return Principal(name, groups, models, True, rate, exact)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyStore:
    """API keys by SHA-256 digest; the key file is re-read when it changes."""

    def __init__(self, path: Path | None = None, env_key: str = "") -> None:
        self.path = path
        self._static: list[tuple[bytes, Principal]] = []
        if env_key:
            self._static.append((_digest(env_key), _principal("api-key", ALL_GROUPS, ("*",), None)))
        self._entries: list[tuple[bytes, Principal]] = list(self._static)
        self._mtime: int | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()
        if path is not None:
            self._load()  # a bad file at start-up is an error, not an open server

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str) -> Principal | None:
        """The key's principal, or None; takes the same time for any key of a given length."""
        self._maybe_reload()
        digest = _digest(key)
        found = None
        for stored, principal in self._entries:
            if hmac.compare_digest(digest, stored):
                found = principal
        return found

    def _maybe_reload(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + RELOAD_CHECK_S
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError as exc:
            log.warning("cannot stat the API key file (keeping the loaded keys): %s", exc.strerror)
            return
        if mtime != self._mtime:
            with self._lock:
                try:
                    self._load()
                except ValueError as exc:  # keep serving with the keys we have
                    log.warning("API key file not reloaded: %s", exc)

    def _load(self) -> None:
        assert self.path is not None
        try:
            mtime = self.path.stat().st_mtime_ns
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the API key file: {exc}") from None
        entries = [*self._static, *parse_key_file(data)]
        self._entries, self._mtime = entries, mtime
        log.info("loaded %d API key(s)", len(entries))


def parse_key_file(data: object) -> list[tuple[bytes, Principal]]:
    """Validate a key file's JSON; raises ValueError naming the bad entry (never its key)."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError('the API key file must be a JSON object {"keys": [...]}')
    entries = []
    for index, item in enumerate(data["keys"]):
        where = f"API key file entry {index}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object")
        name = str(item.get("name", f"key-{index}"))
        if isinstance(item.get("key"), str) and item["key"]:
            digest = _digest(item["key"])
        elif isinstance(item.get("key_sha256"), str):
            try:
                digest = bytes.fromhex(item["key_sha256"])
            except ValueError:
                raise ValueError(f"{where} ('{name}'): key_sha256 is not hex") from None
            if len(digest) != 32:
                raise ValueError(f"{where} ('{name}'): key_sha256 must be 64 hex digits")
        else:
            raise ValueError(f"{where} ('{name}') needs 'key' or 'key_sha256'")
        groups_raw = item.get("groups")
        if groups_raw is None:
            groups = DEFAULT_KEY_GROUPS
        elif groups_raw == ["*"] or groups_raw == "*":
            groups = ALL_GROUPS
        elif isinstance(groups_raw, list):
            groups = frozenset(parse_group(str(g)) for g in groups_raw)
        else:
            raise ValueError(f"{where} ('{name}'): 'groups' must be a list")
        models = item.get("models", ["*"])
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ValueError(f"{where} ('{name}'): 'models' must be a list of names")
        rate = None
        if any(k in item for k in ("requests_per_second", "burst", "tokens_per_minute")):
            rate = RateOverride(
                _number(item, "requests_per_second", where),
                _number(item, "burst", where),
                _number(item, "tokens_per_minute", where),
            )
        entries.append((digest, _principal(name, groups, tuple(models) or ("*",), rate)))
    return entries


def _number(item: dict[str, object], key: str, where: str) -> float | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{where}: '{key}' must be a non-negative number")
    return float(value)


@dataclass(frozen=True, slots=True)
class Restriction:
    """One ``<groups>:<key>=<value>`` rule: these groups need header ``key`` equal to ``value``."""

    header: str
    value: bytes


class RestrictedApis:
    """Triton's restricted APIs for one transport (``--http-restricted-api`` and the gRPC twin).

    Over HTTP the header is ``<key>`` and a refusal is 403 ``This API is restricted, expecting
    header '<key>'``; over gRPC the metadata key is ``triton-grpc-protocol-<key>`` and a refusal
    is UNAVAILABLE ``This protocol is restricted, ...`` — both exactly as Triton answers.
    """

    def __init__(self, rules: dict[ApiGroup, Restriction], error: Callable[[str], ServingError]) -> None:
        self.rules = rules
        self._error = error

    @classmethod
    def parse(cls, specs: list[str], grpc: bool = False) -> RestrictedApis:
        prefix = "triton-grpc-protocol-" if grpc else ""
        rules: dict[ApiGroup, Restriction] = {}
        for spec in specs:
            groups, sep, pair = spec.rpartition(":")
            key, eq, value = pair.partition("=")
            if not sep or not eq or not groups or not key.strip():
                raise ValueError(f"restricted API '{spec}' must look like <api>[,<api>...]:<key>=<value>")
            restriction = Restriction(prefix + key.strip().lower(), value.encode())
            for name in groups.split(","):
                try:
                    group = ApiGroup(name.strip())
                except ValueError:
                    raise ValueError(f"unknown restricted api '{name.strip()}'") from None
                if group in rules:
                    raise ValueError(
                        f"restricted api '{group.value}' can not be specified in multiple config groups"
                    )
                rules[group] = restriction
        if grpc:
            return cls(rules, lambda h: Unavailable(f"This protocol is restricted, expecting header '{h}'"))
        return cls(rules, lambda h: PermissionDenied(f"This API is restricted, expecting header '{h}'"))

    def check(self, headers: Mapping[str, str], group: ApiGroup) -> None:
        rule = self.rules.get(group)
        if rule is None:
            return
        sent = headers.get(rule.header)
        if sent is None or not hmac.compare_digest(sent.encode(), rule.value):
            raise self._error(rule.header)


class Authorizer:
    """Restricted APIs, then API keys and their scopes; health stays open to probes."""

    def __init__(self, keys: KeyStore | None = None, restricted: RestrictedApis | None = None) -> None:
        self.keys = keys if keys is not None and (len(keys) or keys.path is not None) else None
        self.restricted = restricted if restricted is not None and restricted.rules else None

    @property
    def enabled(self) -> bool:
        return self.keys is not None or self.restricted is not None

    def authorize(self, headers: Mapping[str, str], group: ApiGroup, model: str = "") -> Principal:
        """The caller of a call to ``group`` (about ``model``, if any), or a ServingError."""
        if self.restricted is not None:
            self.restricted.check(headers, group)
        if self.keys is None or group is ApiGroup.HEALTH:
            return ANONYMOUS
        key = bearer_token(headers.get("authorization", ""))
        principal = self.keys.lookup(key) if key else None
        if principal is None:
            raise Unauthenticated(_UNAUTHENTICATED)
        if group not in principal.groups or not principal.allows_model(model):
            raise PermissionDenied("this API key is not allowed to make this call")
        return principal


def bearer_token(value: str) -> str:
    """The token of ``Authorization: Bearer <token>`` ("" when absent or another scheme)."""
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def key_store_from(path: str, env_key: str) -> KeyStore | None:
    """The key store for ``--api-key-file`` and ``--api-key`` (None when neither is set)."""
    if not path and not env_key:
        return None
    return KeyStore(Path(path) if path else None, env_key)


__all__ = [
    "ALL_GROUPS",
    "ANONYMOUS",
    "ApiGroup",
    "Authorizer",
    "KeyStore",
    "Principal",
    "RateOverride",
    "RestrictedApis",
    "bearer_token",
    "key_store_from",
]
