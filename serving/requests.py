"""Request bodies of `inttower serve`: parsed, validated, and turned into what `Reader` takes.

Every refusal is a `RequestError` with an HTTP status and a one-line reason naming the
field at fault, so a client sees what to fix. User features follow the event contract:
the ``user`` object holds the feature spec's user-tower fields (categorical values as
strings or integers, multi-categorical as lists of them, numeric as numbers; a field
left out is null, as in the stream), ``context`` the context fields when the spec has any.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from serving.config import ServingConfig

if TYPE_CHECKING:  # the schema comes from model.features.event_schema; serving reads no stream
    from model.features import EventSchema

SCORE_KEYS = frozenset({"user", "context", "candidates", "allow_unknown"})
RETRIEVE_KEYS = frozenset({"user", "context", "k"})


class RequestError(Exception):
    """A request the service refuses: ``status`` (4xx) and a one-line ``reason`` (also the metrics label)."""

    def __init__(self, status: int, label: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.label, self.reason = status, label, reason


@dataclass(frozen=True)
class ScoreRequest:
    user: pa.Table  # one row: the ``user`` (and ``context``) structs
    candidates: list[str | int]
    allow_unknown: bool  # False: an id missing from the version refuses the request


@dataclass(frozen=True)
class RetrieveRequest:
    user: pa.Table
    k: int


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, "malformed_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RequestError(400, "malformed_json", "body must be a JSON object")
    return value


def _check_keys(body: dict[str, Any], allowed: frozenset[str], required: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise RequestError(400, "unknown_field", f"unknown field {unknown[0]!r} (expected: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in body:
            raise RequestError(400, "missing_field", f"missing field {key!r}")


def _value(struct: str, name: str, kind: str, value: Any) -> Any:
    where = f"{struct}.{name}"
    if value is None:
        return None
    if kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RequestError(400, "wrong_type", f"{where} must be a finite number, got {value!r}")
        return float(value)
    if kind == "multi_categorical":
        if not isinstance(value, list):
            raise RequestError(400, "wrong_type", f"{where} must be a list of strings or integers, got {value!r}")
        return [_value(struct, name, "categorical", v) for v in value]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RequestError(400, "wrong_type", f"{where} must be a string or an integer, got {value!r}")
    return str(value)


def user_table(body: dict[str, Any], schema: EventSchema) -> pa.Table:
    """The one-row table of ``user`` (and ``context``) structs the model's user tower reads."""
    columns = {}
    for struct in ("user", "context"):
        fields = schema.struct_fields(struct)
        given = body.get(struct, {} if struct == "context" else None)
        if not fields:
            if struct in body and body[struct]:
                raise RequestError(400, "unknown_field", f"{struct!r}: the feature spec has no {struct} fields")
            continue
        if not isinstance(given, dict):
            raise RequestError(400, "wrong_type", f"{struct!r} must be an object of feature values")
        known = {f.name for f in fields}
        unknown = sorted(set(given) - known)
        if unknown:
            raise RequestError(400, "unknown_field",
                               f"{struct}.{unknown[0]}: not a {struct} feature (expected: {', '.join(sorted(known))})")
        row = {f.name: _value(struct, f.name, f.kind, given.get(f.name)) for f in fields}
        columns[struct] = pa.array([row], type=schema.struct_type(struct))
    return pa.table(columns)


def _ids(value: Any, limit: int) -> list[str | int]:
    if not isinstance(value, list) or not value:
        raise RequestError(400, "wrong_type", "candidates must be a non-empty list of item ids")
    if len(value) > limit:
        raise RequestError(413, "too_many_candidates", f"{len(value)} candidates > [serving] max_candidates {limit}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise RequestError(400, "wrong_type", f"candidate ids must be strings or integers, got {v!r}")
    return value


def parse_score(body: bytes, schema: EventSchema, config: ServingConfig) -> ScoreRequest:
    data = parse_json(body)
    _check_keys(data, SCORE_KEYS, ("user", "candidates"))
    allow_unknown = data.get("allow_unknown", False)
    if not isinstance(allow_unknown, bool):
        raise RequestError(400, "wrong_type", f"allow_unknown must be true or false, got {allow_unknown!r}")
    return ScoreRequest(user_table(data, schema), _ids(data["candidates"], config.max_candidates), allow_unknown)


def parse_retrieve(body: bytes, schema: EventSchema, config: ServingConfig) -> RetrieveRequest:
    data = parse_json(body)
    _check_keys(data, RETRIEVE_KEYS, ("user", "k"))
    k = data["k"]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= config.max_k:
        raise RequestError(400, "bad_k", f"k must be an integer in 1..{config.max_k} ([serving] max_k), got {k!r}")
    return RetrieveRequest(user_table(data, schema), k)
