"""Loading an ensemble loads its step models first, as Triton does in explicit mode.

Called by the repository before an ensemble takes a load slot (so a chain of nested ensembles
cannot use up every slot while waiting). A step model another task is already loading is
awaited; one that is not loaded is loaded; one that is loaded is left as it is. Ensembles that
need each other, directly or through others, are a load error instead of a wait forever.
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol

from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import ServingError
from nereid.server.model_config import ConfigError, find_config_file, parse_config_file

log = logging.getLogger(__name__)

# The ensembles whose loads led to the current one, within one task.
_CHAIN: ContextVar[tuple[str, ...]] = ContextVar("nereid_ensemble_load_chain", default=())
_WAIT_S = 0.01


class Repository(Protocol):
    """What this needs of :class:`~nereid.server.repository.ModelRepository`."""

    models: dict[str, Any]  # name -> entry with ``loading``, ``versions`` and ``error``

    async def load(
        self, name: str, path: Path | None = None, config: mc.ModelConfig | None = None
    ) -> None: ...


def step_model_names(path: Path, override: mc.ModelConfig | None) -> list[str]:
    """The step models an ensemble's config names; [] for any other model or an unreadable config.

    An unreadable config is reported by the normal load path, which reads it again.
    """
    config = override
    if config is None:
        try:
            found = find_config_file(path)
            config = parse_config_file(found) if found is not None else None
        except ConfigError:
            return []
    if config is None or config.platform != "ensemble":
        return []
    return list(dict.fromkeys(step.model_name for step in config.ensemble_scheduling.step))


async def load_step_models(
    repository: Repository, name: str, path: Path, override: mc.ModelConfig | None
) -> None:
    """Make sure every step model of ensemble ``name`` has finished loading; raises ConfigError."""
    steps = step_model_names(path, override)
    if not steps:
        return
    try:
        await _load_steps(repository, name, steps)
    except ConfigError as exc:
        entry = repository.models.get(name)
        if entry is not None and not entry.versions:
            entry.error = exc.message  # shown in the repository index, as a config error would be
        log.error("model '%s' failed to load: %s", name, exc.message)
        raise


async def _load_steps(repository: Repository, name: str, steps: list[str]) -> None:
    chain = (*_CHAIN.get(), name)
    token = _CHAIN.set(chain)
    waiting = _waits(repository)
    try:
        for step in steps:
            if step in chain:
                cycle = " -> ".join((*chain, step))
                raise ConfigError(f"ensemble '{name}': ensembles include each other: {cycle}")
            entry = repository.models.get(step)
            if entry is not None and entry.loading:
                waiting[name] = step
                try:
                    while entry.loading:
                        if _waits_for(waiting, step, name):
                            raise ConfigError(
                                f"ensemble '{name}': ensembles include each other through '{step}'"
                            )
                        await asyncio.sleep(_WAIT_S)
                finally:
                    waiting.pop(name, None)
                continue
            if entry is None or (not entry.versions and not entry.error):
                try:
                    await repository.load(step)
                except ServingError as exc:
                    raise ConfigError(
                        f"ensemble '{name}': step model '{step}' failed to load: {exc.message}"
                    ) from None
    finally:
        _CHAIN.reset(token)


_WAITING: dict[int, dict[str, str]] = {}


def _waits(repository: Repository) -> dict[str, str]:
    """Per repository: which ensemble is waiting for which model's load to finish."""
    return _WAITING.setdefault(id(repository), {})


def _waits_for(waiting: dict[str, str], start: str, target: str) -> bool:
    seen = set()
    current: str | None = start
    while current is not None and current not in seen:
        if current == target:
            return True
        seen.add(current)
        current = waiting.get(current)
    return False
