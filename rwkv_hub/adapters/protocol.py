"""The WebSocket protocol's messages: parsing and validation against the checked-in JSON Schema.

Version 1 (docs/protocol.md). A message that cannot be taken yields a `ProtocolError` with a stable
code and a message that says what was wrong and where; it never leaks internals.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from ..core.errors import RWKVHubError

VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("protocol.schema.json")


class ProtocolError(RWKVHubError):
    def __init__(self, code: str, message: str, request_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.request_id = request_id


@cache
def validator():
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def depth(value: Any, limit: int) -> int:
    """Nesting depth of JSON data, stopping early once past `limit`."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def parse(text: str | bytes, max_depth: int) -> dict[str, Any]:
    """Decode and validate one client message; raises ProtocolError."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError("bad_json", f"the message is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_request", "a message must be a JSON object with a 'type'")
    rid = data.get("id") if isinstance(data.get("id"), str) else None
    if depth(data, max_depth) > max_depth:
        raise ProtocolError("bad_request", f"the message is nested deeper than {max_depth} levels", rid)
    import jsonschema

    err = jsonschema.exceptions.best_match(validator().iter_errors(data))
    if err is not None:
        where = "/".join(str(p) for p in err.absolute_path) or "the message"
        code = "unknown_type" if list(err.absolute_path) == ["type"] else "bad_request"
        if err.validator in ("anyOf", "oneOf") and not err.absolute_path and data.get("type") == "chat":
            raise ProtocolError(code, "a chat request needs 'messages', 'message' or 'input'", rid)
        text = "does not match any accepted form" if err.validator in ("anyOf", "oneOf") else err.message
        raise ProtocolError(code, f"{where}: {_short(text)}", rid)
    return data


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[:limit] + "..."
