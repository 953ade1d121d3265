"""Structured-output fields of completions and chat bodies, as vLLM's ``guided_decoding`` sampling key.

OpenAI's ``response_format`` (``text`` | ``json_object`` | ``json_schema``) and vLLM's extensions
(``guided_json``, ``guided_regex``, ``guided_choice``, ``guided_grammar``, and the newer ``structured_outputs``
object) all become one dict ``{json | json_object | regex | choice | grammar: ...}`` that the engine compiles
(:mod:`nereid.backends.llm.grammar`). Shapes and JSON Schema validity are checked here as 400s naming the
field; what only the grammar engine can judge (a regex or EBNF it cannot compile, the size limits of the
model) comes back from the backend as a 400 too, before anything is generated.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from nereid.server.openai.errors import bad_request
from nereid.server.openai.fields import obj

GUIDED_FIELDS = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}
_KINDS = ("json", "regex", "choice", "grammar", "json_object")
NAME_RULE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for json_schema.name and function names


def guided_decoding(body: dict[str, Any]) -> dict[str, Any] | None:
    """The call's grammar as vLLM's guided_decoding dict, or None; 400 when two ways of asking are combined."""
    found: list[tuple[str, dict[str, Any]]] = []
    fmt = _response_format(body.get("response_format"))
    if fmt is not None:
        found.append(("response_format", fmt))
    for key, kind in GUIDED_FIELDS.items():
        if body.get(key) is not None:
            found.append((key, {kind: _value(kind, body[key], key)}))
    if body.get("structured_outputs") is not None:
        found.append(("structured_outputs", _structured_outputs(body["structured_outputs"])))
    if len(found) > 1:
        names = " and ".join(f"'{name}'" for name, _ in found)
        raise bad_request(f"{names} cannot be combined: give one way of constraining the output", found[1][0])
    return found[0][1] if found else None


def _response_format(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    fmt = obj(value, "response_format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind != "json_schema":
        raise bad_request(
            f"'response_format.type' must be 'text', 'json_object' or 'json_schema', got {kind!r}",
            "response_format.type",
        )
    spec = obj(fmt.get("json_schema"), "response_format.json_schema")
    name = spec.get("name")
    if not isinstance(name, str) or not NAME_RULE.match(name):
        raise bad_request(
            "'response_format.json_schema.name' must be 1-64 letters, digits, '_' or '-'",
            "response_format.json_schema.name",
        )
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise bad_request(
            "'response_format.json_schema.strict' must be a boolean", "response_format.json_schema.strict"
        )
    schema = spec.get("schema", {})  # OpenAI: no schema means any JSON object
    return {"json": check_schema(schema, "response_format.json_schema.schema")}


def _structured_outputs(value: Any) -> dict[str, Any]:
    given = {k: v for k, v in obj(value, "structured_outputs").items() if v not in (None, False, "")}
    unknown = sorted(set(given) - set(_KINDS))
    if unknown:
        raise bad_request(
            f"'structured_outputs.{unknown[0]}' is not supported", f"structured_outputs.{unknown[0]}"
        )
    if len(given) != 1:
        raise bad_request(
            f"'structured_outputs' needs exactly one of {', '.join(_KINDS)}", "structured_outputs"
        )
    kind, inner = next(iter(given.items()))
    return {kind: _value(kind, inner, f"structured_outputs.{kind}")}


def _value(kind: str, value: Any, field: str) -> Any:
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise bad_request(f"'{field}' is not valid JSON: {exc}", field) from None
        return check_schema(value, field)
    if kind == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
            raise bad_request(f"'{field}' must be a non-empty list of non-empty strings", field)
        return value
    if kind == "json_object":
        if value is not True:
            raise bad_request(f"'{field}' must be true", field)
        return True
    if not isinstance(value, str) or not value:
        raise bad_request(f"'{field}' must be a non-empty string", field)
    return value


def check_schema(schema: Any, field: str) -> dict[str, Any]:
    """``schema`` if it is a JSON Schema object (draft 2020-12 meta-schema), else a 400 naming ``field``."""
    if not isinstance(schema, dict):
        raise bad_request(f"'{field}' must be a JSON Schema object", field)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise bad_request(
            f"'{field}' is not a valid JSON Schema: {exc.message}{f' (at {where})' if where else ''}", field
        ) from None
    return schema
