"""The Python backend: serves Triton ``model.py`` files (``backend: "python"``) unchanged.

A model file defines ``TritonPythonModel`` with ``execute(requests)`` and optionally
``initialize(args)``, ``finalize()`` and a static ``auto_complete_config(config)``; it imports
Nereid's own :mod:`~nereid.backends.python.pb_utils` as ``triton_python_backend_utils``.

Containment of a misbehaving model
    Stub process (the default, as in Triton; ``NEREID_ISOLATION`` unset or ``"process"``):
    each instance runs in its own stub process (``python -m nereid.backends.python.stub``);
    ``auto_complete_config`` also runs in a short-lived stub. When the stub dies (``os._exit``,
    a segfault) the server logs the model, instance and exit code or signal, the in-flight
    requests (and open decoupled streams) fail with it, and the instance restarts in the
    background (``initialize`` runs again); with ``NEREID_EXECUTE_TIMEOUT_SECONDS`` set a hung
    stub is killed and restarted. Tensor bytes cross in shared memory (see ``isolation``); BLS
    calls and ``is_cancelled()`` are forwarded to the server; the model loading API is not
    available there.

    In-process (the opt-in for speed,
    ``parameters { key: "NEREID_ISOLATION" value: { string_value: "none" } }``): each instance
    is a separate import of the file, run on the instance's scheduler thread. An exception in
    ``execute`` -- including ``SystemExit`` -- fails that call's requests with an error naming
    the model, instance and cause, and the instance keeps serving, as in a stub. A contract
    break (wrong number of responses, a non-response, an output whose datatype or shape
    disagrees with the config) fails the affected requests the same way in both modes. With the
    timeout set, a call that runs longer fails its requests on time; the call cannot be
    interrupted, so the instance answers UNAVAILABLE until it returns. A crash of the
    interpreter takes the whole server down: choose it only for trusted, pure-Python models.

Both parameters are read from the model config's ``parameters``.
"""

from __future__ import annotations

import json
from pathlib import Path

from nereid.backends.base import Backend, InstanceContext, Model, ModelContext, ModelInstance
from nereid.backends.python import loader, runtime
from nereid.backends.python.bls import CoreBls
from nereid.backends.python.codec import Codec
from nereid.backends.python.inprocess import InProcessInstance
from nereid.backends.python.instance import InstanceSetup, Isolation
from nereid.backends.python.isolation import ProcessInstance, auto_complete_in_stub
from nereid.backends.python.runner import ExecuteError, auto_complete
from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import Unavailable
from nereid.server.model_config import ConfigError, config_from_dict, config_to_dict


class PythonBackend(Backend):
    default_model_filename = "model.py"

    def auto_complete_config(self, config: mc.ModelConfig, version_dir: Path) -> None:
        """Run the model's static ``auto_complete_config`` (in a stub with process isolation)."""
        path = version_dir / (config.default_model_filename or self.default_model_filename)
        if not path.is_file():
            return  # load_model reports the missing file
        if "auto_complete_config" not in path.read_text(encoding="utf-8", errors="replace"):
            return  # nothing to run: spare the import (and, with process isolation, a stub)
        isolation = Isolation.from_config(config)
        name = loader.module_name(config.name, version_dir.name, "auto_complete")
        where = f"model '{config.name}'"
        given = config_to_dict(config, every_field=True)
        try:
            if isolation.process:
                completed = auto_complete_in_stub(path, name, given, where)
            else:
                completed = auto_complete(path, name, given)
            result = config_from_dict(completed, f"{where}: auto_complete_config() made an invalid config")
        except (loader.ModelFileError, ExecuteError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except (TypeError, ValueError) as exc:  # what ParseDict raises besides its ParseError
            raise ConfigError(f"{where}: auto_complete_config() made an invalid config: {exc}") from None
        config.CopyFrom(result)

    def load_model(self, context: ModelContext) -> Model:
        path = context.model_file
        if not path.is_file():
            raise Unavailable(f"model '{context.name}': model file '{path}' does not exist")
        return PythonModel(context, path)


class PythonModel(Model):
    """One version of a ``model.py``; its instances run in-process or in stub processes."""

    def __init__(self, context: ModelContext, path: Path) -> None:
        super().__init__(context)
        bls = CoreBls(context.core) if context.core is not None else None
        if bls is not None:
            runtime.set_default(bls)
        self.setup = InstanceSetup(
            context=context,
            path=path,
            isolation=Isolation.from_config(context.config),
            codec=Codec(context.name, context.version, context.config),
            bls=bls,
            config_json=json.dumps(config_to_dict(context.config, every_field=True)),
        )

    def create_instance(self, context: InstanceContext) -> ModelInstance:
        if self.setup.isolation.process:
            return ProcessInstance(self, self.setup, context)
        return InProcessInstance(self, self.setup, context)
