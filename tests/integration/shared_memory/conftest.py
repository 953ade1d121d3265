"""Let tritonclient's shared memory helpers import where setuptools no longer ships ``pkg_resources``.

tritonclient 2.41's ``tritonclient.utils.shared_memory`` finds its ``libcshm.so`` with
``pkg_resources.resource_filename``, which setuptools 81+ removed. The stand-in answers that one
call from ``importlib.resources``; the helpers themselves (the C library, ``shm_open``) are the
real ones a user runs.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from importlib.resources import files

if importlib.util.find_spec("pkg_resources") is None:
    stand_in = types.ModuleType("pkg_resources")
    stand_in.resource_filename = lambda package, name: str(files(package) / name)  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = stand_in
