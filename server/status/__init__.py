"""The status page: a page a person can open at ``/``, fed by ``/status/data`` (JSON)."""
