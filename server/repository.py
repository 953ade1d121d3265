"""The model repository: Triton's folder layout, version policies, and model states.

``<root>/<model>/config.(pbtxt|yaml)`` plus numeric version folders. Each version is
READY, UNAVAILABLE (with a reason), LOADING or UNLOADING. The repository finds versions;
which version serves a request that names none is the core's decision
(:meth:`~nereid.server.core.InferenceCore.route`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nereid.backends import registry
from nereid.ensembles import load_step_models
from nereid.ensembles.plan import build_plan
from nereid.proto import model_config_pb2 as mc
from nereid.server.catalog import IndexEntry
from nereid.server.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServingError,
    Unavailable,
)
from nereid.server.lifecycle import (
    MEMORY_KEY,
    Fingerprint,
    fingerprint,
    footprint,
    remove_upload,
    write_uploads,
)
from nereid.server.model_config import (
    ConfigError,
    fill_defaults,
    find_config_file,
    parse_config_file,
    validate,
)
from nereid.server.model_version import ModelVersion, has_gpu, load_version
from nereid.server.paths import confine_config_paths, scrub_paths
from nereid.server.resource_limiter import ResourceLimiter
from nereid.server.routing.config import check_versions, routing_config
from nereid.server.routing.policy import RoutingPolicy
from nereid.server.types import CoreHandle

log = logging.getLogger(__name__)

_VERSION_DIR = re.compile(r"^(0|[1-9][0-9]*)$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def check_model_name(name: str) -> None:
    """Reject names that could escape the repository or are not folder names."""
    if not name or ".." in name or not _MODEL_NAME.match(name) or len(name) > 255:
        raise InvalidArgument(f"invalid model name '{name}'")


@dataclass
class VersionState:
    state: str  # READY | UNAVAILABLE | LOADING | UNLOADING
    reason: str = ""


@dataclass
class ModelEntry:
    """What the repository knows of one model folder."""

    name: str
    path: Path
    config: mc.ModelConfig | None = None
    # The last load's failure: model-level when nothing serves (shown with version ""), else
    # shown beside the versions that kept serving.
    error: str = ""
    loading: bool = False
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    states: dict[int, VersionState] = field(default_factory=dict)
    routing: RoutingPolicy | None = None
    #: Serialises load, unload and eviction of this model.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = 0.0  # monotonic seconds of the last routed request
    evicted: bool = False
    footprint: int = 0  # estimated resident bytes while loaded
    fingerprint: Fingerprint | None = None  # of the folder at the last load (poll mode)
    restoring: asyncio.Future[None] | None = None  # the reload of an evicted model, shared


def available_versions(model_dir: Path) -> list[int]:
    return sorted(
        int(child.name) for child in model_dir.iterdir() if child.is_dir() and _VERSION_DIR.match(child.name)
    )


def select_versions(policy: mc.ModelVersionPolicy, available: list[int]) -> list[int]:
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return available
    if choice == "specific":
        return [v for v in available if v in set(policy.specific.versions)]
    count = policy.latest.num_versions if choice == "latest" else 1
    return available[-count:]


def prepare_config(
    model_dir: Path, override: mc.ModelConfig | None = None, auto_complete: bool = True
) -> mc.ModelConfig:
    """Parse (or take ``override``), auto-complete, default and validate a config (loader thread)."""
    name = model_dir.name
    path = None if override is not None else find_config_file(model_dir)
    config = mc.ModelConfig()
    if override is not None:
        config.CopyFrom(override)
    elif path is not None:
        config = parse_config_file(path)
    origin = "load request config" if override is not None else str(path or model_dir)
    if config.name and config.name != name:
        raise ConfigError(f"{origin}: 'name' is '{config.name}' but the folder is '{name}'")
    config.name = name
    no_config = path is None and override is None
    if no_config and not config.backend and not config.platform and any(model_dir.glob("*/model.onnx")):
        config.platform = "onnxruntime_onnx"
    if config.platform == "ensemble":
        validate(config, origin)
        build_plan(config, origin)  # Ensemble hook: the DAG's own checks, before any step is touched
        fill_defaults(config, "", 1, False)
        return config
    try:
        backend_name = registry.resolve_name(config.backend, config.platform)
    except NotFound as exc:
        raise ConfigError(f"{origin}: {exc.message}") from None
    backend = registry.get(backend_name)
    filename = config.default_model_filename or backend.default_model_filename
    versions = available_versions(model_dir)
    # A load request's config is client input: its backend path parameters are confined too.
    path_parameters = tuple(backend.path_parameters) if override is not None else ()
    probe = mc.ModelConfig()
    probe.CopyFrom(config)
    probe.default_model_filename = filename
    # Before auto-complete, which already opens (or imports) the model file.
    _confine(probe, model_dir, versions, path_parameters, origin)
    if auto_complete and versions:
        backend.auto_complete_config(probe, model_dir / str(versions[-1]))
        config.CopyFrom(probe)
    fill_defaults(config, filename, backend.default_instance_count, has_gpu())
    validate(config, origin)
    _confine(config, model_dir, versions, path_parameters, origin)  # auto-complete may have set names
    return config


def _confine(
    config: mc.ModelConfig,
    model_dir: Path,
    versions: list[int],
    path_parameters: tuple[str, ...],
    origin: str,
) -> None:
    try:
        confine_config_paths(config, model_dir, versions, path_parameters)
    except InvalidArgument as exc:
        raise ConfigError(f"{origin}: {exc.message}") from None


class ModelRepository:
    """Loads the models of one or more repository roots and tracks their states."""

    def __init__(
        self,
        roots: list[Path],
        core: CoreHandle | None = None,
        load_threads: int = 4,
        memory_budget: int = 0,
        restore_timeout: float = 60.0,
    ) -> None:
        self.roots = roots
        self.core = core
        #: Triton's rate limiter (``--rate-limit execution_count``); None when off.
        self.resource_limiter: ResourceLimiter | None = None
        self.models: dict[str, ModelEntry] = {}
        self._load_slots = asyncio.Semaphore(load_threads)
        #: Bytes the loaded models may take (0: no limit); least recently used idle models are
        #: evicted to make room and loaded again by their next request.
        self.memory_budget = memory_budget
        self.restore_timeout = restore_timeout
        self.evictions = 0
        self._budget_turn: contextlib.AbstractAsyncContextManager[object] = (
            asyncio.Lock() if memory_budget else contextlib.nullcontext()
        )

    def scan(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for root in self.roots:
            if not root.is_dir():
                raise NotFound(f"model repository '{root}' does not exist")
            for child in sorted(root.iterdir()):
                if child.is_dir() and not child.name.startswith("."):
                    found.setdefault(child.name, child)
        return found

    async def load_all(self, names: list[str] | None = None) -> None:
        found = self.scan()
        wanted = found if names is None else {n: found[n] for n in names if n in found}
        # Ensemble hook: marked loading up front, so an ensemble waits for its steps' loads.
        for name, path in wanted.items():
            self.models.setdefault(name, ModelEntry(name, path)).loading = True
        # Failures are recorded in each model's state; one bad model never stops the others.
        await asyncio.gather(
            *(self.load(name, path) for name, path in wanted.items()), return_exceptions=True
        )

    async def load(
        self,
        name: str,
        path: Path | None = None,
        config: mc.ModelConfig | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> None:
        """(Re)load a model: new versions load beside the old ones, then replace them.

        ``files`` (paths relative to the model folder, from ``file:`` load parameters) with
        ``config`` form a model folder of their own, as Triton's load API.
        """
        check_model_name(name)
        if files:
            if config is None:
                raise InvalidArgument("loading with 'file:' parameters needs a 'config' parameter too")
            path = await asyncio.to_thread(write_uploads, name, files)
        elif path is None:
            path = self.scan().get(name)
            if path is None:
                raise NotFound(f"failed to load '{name}', no model folder of that name in the repository")
        entry = self.models.setdefault(name, ModelEntry(name, path))
        async with entry.lock:
            entry.loading = True
            try:
                # Ensemble hook: its step models load (or finish loading) first, outside the slots.
                await load_step_models(self, name, path, config)
                # Under a memory budget loads take turns, so none counts on room another takes.
                async with self._budget_turn, self._load_slots:
                    await self._load_entry(entry, path, config)
            except BaseException as exc:
                if files:
                    remove_upload(path)
                if not isinstance(exc, Exception):
                    raise
                # Load errors reach clients: repository paths relative to the root, no other paths.
                error = exc if isinstance(exc, ServingError) else InvalidArgument(_reason(exc))
                error.message = self.scrub(error.message)
                error.args = (error.message,)
                raise error from None
            finally:
                entry.loading = False
            if entry.path != path:
                remove_upload(entry.path)
                entry.path = path

    async def _load_entry(self, entry: ModelEntry, path: Path, override: mc.ModelConfig | None) -> None:
        entry.fingerprint = await asyncio.to_thread(fingerprint, path)
        try:
            config = await asyncio.to_thread(prepare_config, path, override)
            try:
                present = available_versions(path)
            except OSError as exc:
                raise Unavailable(f"failed to load '{entry.name}': cannot read {path}: {exc}") from None
            versions = select_versions(config.version_policy, present)
            if not versions:
                raise ConfigError(f"{path}: no version folder matches the version policy")
            origin = "load request config" if override is not None else str(path)
            routing = routing_config(config, origin)
            if routing is not None:
                check_versions(routing, versions, origin)
            size = _memory_bytes(config) or await asyncio.to_thread(footprint, path, versions)
            await self._make_room(entry, size)
        except Exception as exc:
            log.error("model '%s' failed to load: %s", entry.name, _reason(exc))
            entry.error = self.scrub(_reason(exc))
            if not entry.versions:
                entry.config = None
            raise
        for version in versions:
            entry.states.setdefault(version, VersionState("LOADING"))
        results = await asyncio.gather(
            *(
                asyncio.to_thread(load_version, entry.name, v, config, path, self.core, self.resource_limiter)
                for v in versions
            ),
            return_exceptions=True,
        )
        loaded = {v: r for v, r in zip(versions, results, strict=True) if isinstance(r, ModelVersion)}
        failures = {v: r for v, r in zip(versions, results, strict=True) if not isinstance(r, ModelVersion)}
        if failures and entry.versions:
            # A failed reload keeps what was serving.
            for model in loaded.values():
                await model.unload()
            for version in failures:
                if version not in entry.versions:
                    entry.states[version] = VersionState(
                        "UNAVAILABLE", self.scrub(_reason(failures[version]))
                    )
            first = next(iter(failures.values()))
            entry.error = self.scrub(f"reload failed, previous versions keep serving: {_reason(first)}")
            log.error("model '%s': %s", entry.name, entry.error)
            raise first if isinstance(first, ServingError) else InvalidArgument(_reason(first))
        old = entry.versions
        for model in loaded.values():
            model.scheduler.start()
        # The swap: from here requests route to the new versions; the old ones drain below.
        keep = entry.routing is not None and routing is not None and entry.routing.config == routing
        if not keep:
            entry.routing = RoutingPolicy(entry.name, routing) if routing is not None else None
        entry.config, entry.error, entry.versions = config, "", loaded
        entry.evicted, entry.footprint, entry.last_used = False, size, time.monotonic()
        entry.states = {v: VersionState("UNAVAILABLE", "unloaded") for v in old if v not in loaded}
        entry.states.update({v: VersionState("READY") for v in loaded})
        for version, failure in failures.items():
            entry.states[version] = VersionState("UNAVAILABLE", self.scrub(_reason(failure)))
            log.error("model '%s' version %d failed to load: %s", entry.name, version, _reason(failure))
        for version, model in old.items():
            if loaded.get(version) is not model:
                await model.unload()
        if failures and not loaded:
            first = next(iter(failures.values()))
            # A config only a loaded version can check (sequence batching, rate limiter) and a
            # warmup sample (a missing or short file) are the client's to fix, as the config errors
            # found before loading are: Triton answers INVALID_ARG ("load failed for model ...").
            kind = InvalidArgument if isinstance(first, InvalidArgument) else Unavailable
            raise kind(f"failed to load '{entry.name}': {_reason(first)}")

    def scrub(self, message: str) -> str:
        """``message`` fit for clients: paths relative to the repository root, no other absolute paths."""
        return scrub_paths(message, self.roots)

    async def unload(self, name: str, unload_dependents: bool = False, reason: str = "unloaded") -> None:
        """Unload every version; queued and running requests finish first (a drain)."""
        check_model_name(name)
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"failed to unload '{name}', model is not known")
        async with entry.lock:
            await self._unload_entry(entry, reason)
        if unload_dependents:
            for dependent in self.dependents(name):
                await self.unload(dependent, unload_dependents=True)

    async def _unload_entry(self, entry: ModelEntry, reason: str) -> None:
        old, entry.versions = entry.versions, {}
        for version in old:
            entry.states[version] = VersionState("UNLOADING")
        for model in old.values():
            await model.unload()
        entry.states = {v: VersionState("UNAVAILABLE", reason) for v in entry.states}
        entry.evicted, entry.footprint = reason == "evicted", 0
        if reason != "evicted":
            remove_upload(entry.path)

    def dependents(self, name: str) -> list[str]:
        """Loaded ensembles with a step on ``name`` (unloaded with it on ``unload_dependents``)."""
        return sorted(
            other.name
            for other in self.models.values()
            if other.versions
            and other.config is not None
            and any(step.model_name == name for step in other.config.ensemble_scheduling.step)
        )

    # ---- eviction ----------------------------------------------------------------------------

    def touch(self, name: str) -> None:
        """Mark ``name`` used now (least-recently-used eviction)."""
        entry = self.models.get(name)
        if entry is not None:
            entry.last_used = time.monotonic()

    def resident_bytes(self) -> int:
        return sum(e.footprint for e in self.models.values() if e.versions)

    async def _make_room(self, entry: ModelEntry, size: int) -> None:
        """Evict least recently used idle models until ``size`` more bytes fit the budget."""
        budget = self.memory_budget
        if not budget:
            return
        if size > budget:
            raise ResourceExhausted(
                f"model '{entry.name}' needs about {size} bytes, more than the memory budget of {budget}"
            )
        while self.resident_bytes() - (entry.footprint if entry.versions else 0) + size > budget:
            idle = [
                e
                for e in self.models.values()
                if e is not entry and e.versions and not e.loading and not e.lock.locked() and _idle(e)
            ]
            if not idle:
                raise ResourceExhausted(
                    f"cannot load '{entry.name}' ({size} bytes): the memory budget of {budget} bytes is "
                    f"taken by {self.resident_bytes()} bytes of busy models"
                )
            victim = min(idle, key=lambda e: e.last_used)
            log.info("evicting model '%s' (%d bytes) to load '%s'", victim.name, victim.footprint, entry.name)
            self.evictions += 1
            async with victim.lock:
                await self._unload_entry(victim, "evicted")

    async def restore(self, name: str) -> None:
        """Load an evicted model again for a request waiting on it (within ``restore_timeout``).

        Concurrent requests share one reload; a waiter that times out leaves it running.
        """
        entry = self.models.get(name)
        if entry is None or not entry.evicted:
            return
        if entry.restoring is None:
            path = entry.path if entry.path.parent.name.startswith("nereid-upload-") else None
            entry.restoring = asyncio.ensure_future(self.load(name, path))
            entry.restoring.add_done_callback(lambda done: _restored(entry, done))
        try:
            await asyncio.wait_for(asyncio.shield(entry.restoring), self.restore_timeout)
        except TimeoutError:
            raise Unavailable(
                f"model '{name}' was evicted and did not load again within {self.restore_timeout:g} s"
            ) from None

    # ---- poll mode ---------------------------------------------------------------------------

    async def poll(self) -> None:
        """Apply what changed on disk since the last load: added, changed and removed models."""
        found = self.scan()
        jobs = []
        for name, path in found.items():
            entry = self.models.get(name)
            if entry is not None and (entry.evicted or entry.loading):
                continue  # an evicted model reads its files when it is needed again
            current = await asyncio.to_thread(fingerprint, path)
            if entry is None or entry.fingerprint != current:
                log.info("poll: %s model '%s'", "loading" if entry is None else "reloading", name)
                jobs.append(self.load(name, path))
        for name, entry in self.models.items():
            if name not in found and (entry.versions or entry.evicted):
                log.info("poll: model '%s' was removed; unloading", name)
                jobs.append(self.unload(name))
        await asyncio.gather(*jobs, return_exceptions=True)

    def entry(self, name: str) -> ModelEntry:
        """The model's entry; NotFound (after checking the name) when the repository has none."""
        entry = self.models.get(name)
        if entry is None:
            check_model_name(name)
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        return entry

    def version(self, name: str, version: str) -> ModelVersion:
        """The loaded version ``version`` (a decimal string) of ``name``, or the error Triton gives."""
        entry = self.entry(name)
        number = parse_version(version)
        model = entry.versions.get(number)
        if model is None:
            if number in entry.states:
                raise Unavailable(
                    f"Request for unknown model: '{name}' version {version} is not at ready state"
                )
            raise NotFound(f"Request for unknown model: '{name}' version {version} is not found")
        return _serving(model)

    def latest(self, name: str) -> ModelVersion:
        """The highest loaded version of ``name``."""
        entry = self.entry(name)
        if not entry.versions:
            raise Unavailable(f"Request for unknown model: '{name}' has no available versions")
        return _serving(entry.versions[max(entry.versions)])

    def lookup(self, name: str, version: str = "") -> ModelVersion:
        """For metadata, config, readiness and statistics: the version named, else the highest loaded."""
        return self.version(name, version) if version else self.latest(name)

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        rows: list[IndexEntry] = []
        for name in sorted(self.models):
            entry = self.models[name]
            if entry.error and not entry.states:
                if not ready_only:
                    rows.append(IndexEntry(name, "", "UNAVAILABLE", entry.error))
                continue
            shares = entry.routing.shares() if entry.routing is not None else {}
            for version in sorted(entry.states):
                state = self._state(entry, version)
                if ready_only and state.state != "READY":
                    continue
                reason = state.reason
                if state.state == "READY":
                    notes = [f"traffic {shares[version]:g}%"] if version in shares else []
                    canary = entry.routing.canary if entry.routing is not None else None
                    if canary is not None and version == canary.canary.candidate:
                        notes.append(
                            f"canary {canary.status} step {canary.step + 1}/{len(canary.canary.steps)}"
                        )
                    if entry.error:
                        notes.append(entry.error)
                    reason = "; ".join(notes)
                rows.append(IndexEntry(name, str(version), state.state, reason))
        return rows

    def all_ready(self) -> bool:
        """Strict readiness: every known version is READY, except those unloaded or evicted."""
        for entry in self.models.values():
            if (entry.error and not entry.versions) or entry.loading:
                return False
            for version in entry.states:
                state = self._state(entry, version)
                if state.state != "READY" and state.reason not in ("unloaded", "evicted"):
                    return False
        return True

    @staticmethod
    def _state(entry: ModelEntry, version: int) -> VersionState:
        """A version's state; a READY ensemble whose step model is down reads UNAVAILABLE (hook)."""
        state = entry.states[version]
        model = entry.versions.get(version)
        reason = model.unready_reason() if model is not None and state.state == "READY" else ""
        return VersionState("UNAVAILABLE", reason) if reason else state

    async def unload_all(self) -> None:
        await asyncio.gather(*(self.unload(name) for name, e in self.models.items() if e.versions))


def parse_version(version: str) -> int:
    """A version path segment or field: ASCII decimal digits only (``"²".isdigit()`` is true)."""
    if not version.isascii() or not version.isdigit() or len(version) > 19:
        raise InvalidArgument(f"model version must be a non-negative integer, got '{version}'")
    return int(version)


def _serving(model: ModelVersion) -> ModelVersion:
    """Ensemble hook: a loaded ensemble serves only while every step model is ready."""
    reason = model.unready_reason()
    if reason:
        raise Unavailable(f"Request for unknown model: '{model.name}' is not ready: {reason}")
    return model


def _memory_bytes(config: mc.ModelConfig) -> int:
    if MEMORY_KEY not in config.parameters:
        return 0
    text = config.parameters[MEMORY_KEY].string_value.strip()
    if not text.isdigit():
        raise ConfigError(f"parameters['{MEMORY_KEY}'] must be a byte count, got '{text}'")
    return int(text)


def _restored(entry: ModelEntry, done: asyncio.Future[None]) -> None:
    entry.restoring = None
    if not done.cancelled() and done.exception() is not None:  # retrieved: the waiters got it
        log.error("model '%s' failed to load again after eviction: %s", entry.name, done.exception())


def _idle(entry: ModelEntry) -> bool:
    return all(model.stats.pending == 0 for model in entry.versions.values())


def _reason(failure: BaseException | object) -> str:
    if isinstance(failure, ServingError):
        return failure.message
    if isinstance(failure, BaseException):
        return f"{type(failure).__name__}: {failure}"
    return str(failure)
