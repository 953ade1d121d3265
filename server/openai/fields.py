"""Type and range checks of single JSON fields, each failing as a 400 that names the field."""

from __future__ import annotations

from typing import Any

from nereid.server.openai.errors import bad_request


def token_ids(value: Any, name: str, allow_empty: bool = False) -> list[int]:
    ok = isinstance(value, list) and (allow_empty or value)
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise bad_request(f"'{name}' must be a list of non-negative token ids", name)
    return list(value)


def obj(value: Any, where: str = "the request body") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request(f"{where} must be a JSON object", None if where.startswith("the ") else where)
    return value


def flag(body: dict[str, Any], key: str, prefix: str = "") -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        name = f"{prefix}.{key}" if prefix else key
        raise bad_request(f"'{name}' must be a boolean, got {value!r}", name)
    return value


def number(
    body: dict[str, Any],
    key: str,
    integer: bool,
    low: float | None,
    high: float | None,
    open_low: bool = False,
) -> Any:
    """``body[key]`` checked to be an integer (or any number) within the bounds; None when absent."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise bad_request(f"'{key}' must be {'an integer' if integer else 'a number'}, got {value!r}", key)
    below = low is not None and (value <= low if open_low else value < low)
    if below or (high is not None and value > high):
        if high is None:
            bounds = f"{'>' if open_low else '>='} {low}"
        else:
            bounds = f"in {'(' if open_low else '['}{low}, {high}]"
        raise bad_request(f"'{key}' must be {bounds}, got {value}", key)
    return value
