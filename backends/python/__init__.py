"""The Python backend: Triton ``model.py`` files served unchanged.

Reading order: ``backend`` (backend, model, in-process instance, how failures are contained),
``pb_utils`` (Nereid's ``triton_python_backend_utils``), ``loader`` and ``runner`` (importing
and calling the user's class), ``codec`` (Nereid <-> pb_utils objects), ``bls`` (calls to
other models), ``isolation`` and ``stub`` (the stub process per instance, the default), ``arena`` and
``wire`` (tensors in shared memory between them).
"""
