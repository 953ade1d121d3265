"""The model repository: Triton's folder layout, version policies, and model states.

``<root>/<model>/config.(pbtxt|yaml)`` plus numeric version folders. Each version is
READY, UNAVAILABLE (with a reason), LOADING or UNLOADING. The repository finds versions;
which version serves a request that names none is the core's decision
(:meth:`~nereid.server.core.InferenceCore.route`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from nereid.backends import registry
from nereid.ensembles import load_step_models
from nereid.ensembles.plan import build_plan
from nereid.proto import model_config_pb2 as mc
from nereid.server.catalog import IndexEntry
from nereid.server.errors import InvalidArgument, NotFound, ServingError, Unavailable
from nereid.server.model_config import (
    ConfigError,
    fill_defaults,
    find_config_file,
    parse_config_file,
    validate,
)
from nereid.server.model_version import ModelVersion, has_gpu, load_version
from nereid.server.paths import confine_config_paths, scrub_paths
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
    error: str = ""  # model-level failure (config, backend), shown with version ""
    loading: bool = False
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    states: dict[int, VersionState] = field(default_factory=dict)


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

    def __init__(self, roots: list[Path], core: CoreHandle | None = None, load_threads: int = 4) -> None:
        self.roots = roots
        self.core = core
        self.models: dict[str, ModelEntry] = {}
        self._load_slots = asyncio.Semaphore(load_threads)

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

    async def load(self, name: str, path: Path | None = None, config: mc.ModelConfig | None = None) -> None:
        """(Re)load a model: new versions load in the background, then replace the old ones."""
        check_model_name(name)
        if path is None:
            path = self.scan().get(name)
            if path is None:
                raise NotFound(f"failed to load '{name}', no model folder of that name in the repository")
        entry = self.models.setdefault(name, ModelEntry(name, path))
        entry.loading = True
        try:
            # Ensemble hook: its step models load (or finish loading) first, outside the slots.
            await load_step_models(self, name, path, config)
            async with self._load_slots:
                await self._load_entry(entry, path, config)
        except Exception as exc:
            # Load errors reach clients: repository paths relative to the root, no other paths.
            error = exc if isinstance(exc, ServingError) else InvalidArgument(_reason(exc))
            error.message = self.scrub(error.message)
            error.args = (error.message,)
            raise error from None
        finally:
            entry.loading = False

    async def _load_entry(self, entry: ModelEntry, path: Path, override: mc.ModelConfig | None) -> None:
        try:
            config = await asyncio.to_thread(prepare_config, path, override)
            versions = select_versions(config.version_policy, available_versions(path))
            if not versions:
                raise ConfigError(f"{path}: no version folder matches the version policy")
        except Exception as exc:
            log.error("model '%s' failed to load: %s", entry.name, _reason(exc))
            if not entry.versions:
                entry.error, entry.config = self.scrub(_reason(exc)), None
            raise
        for version in versions:
            entry.states.setdefault(version, VersionState("LOADING"))
        results = await asyncio.gather(
            *(asyncio.to_thread(load_version, entry.name, v, config, path, self.core) for v in versions),
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
            raise first if isinstance(first, ServingError) else InvalidArgument(_reason(first))
        old = entry.versions
        for model in loaded.values():
            model.scheduler.start()
        entry.config, entry.error, entry.versions = config, "", loaded
        entry.states = {v: VersionState("READY") for v in loaded}
        for version, failure in failures.items():
            entry.states[version] = VersionState("UNAVAILABLE", self.scrub(_reason(failure)))
            log.error("model '%s' version %d failed to load: %s", entry.name, version, _reason(failure))
        for version, model in old.items():
            if loaded.get(version) is not model:
                await model.unload()
        if failures and not loaded:
            raise Unavailable(f"failed to load '{entry.name}': {_reason(next(iter(failures.values())))}")

    def scrub(self, message: str) -> str:
        """``message`` fit for clients: paths relative to the repository root, no other absolute paths."""
        return scrub_paths(message, self.roots)

    async def unload(self, name: str) -> None:
        check_model_name(name)
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"failed to unload '{name}', model is not known")
        old, entry.versions = entry.versions, {}
        for version in old:
            entry.states[version] = VersionState("UNLOADING")
        for model in old.values():
            await model.unload()
        entry.states = {v: VersionState("UNAVAILABLE", "unloaded") for v in entry.states}

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
            for version in sorted(entry.states):
                state = self._state(entry, version)
                if ready_only and state.state != "READY":
                    continue
                rows.append(IndexEntry(name, str(version), state.state, state.reason))
        return rows

    def all_ready(self) -> bool:
        """Strict readiness: every known version is READY, except those explicitly unloaded."""
        for entry in self.models.values():
            if entry.error or entry.loading:
                return False
            for version in entry.states:
                state = self._state(entry, version)
                if state.state != "READY" and state.reason != "unloaded":
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


def _reason(failure: BaseException | object) -> str:
    if isinstance(failure, ServingError):
        return failure.message
    if isinstance(failure, BaseException):
        return f"{type(failure).__name__}: {failure}"
    return str(failure)
