"""``pb_utils.TritonModelException``, in its own module so that pb_utils' parts can raise it too."""

from __future__ import annotations


class TritonModelException(Exception):
    """Raised by user code (or by ``pb_utils``) to fail ``initialize``, ``execute`` or ``finalize``."""

    def __init__(self, msg: str = "") -> None:
        super().__init__(msg)
        self._msg = msg

    def message(self) -> str:
        return self._msg
