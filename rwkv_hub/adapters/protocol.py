"""The WebSocket protocol's messages: parsing and validation against the checked-in JSON Schema.

Version 1 (docs/protocol.md). A message that cannot be taken yields a `ProtocolError` with a stable
code and a message that says what was wrong and where; it never leaks internals.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from ..core.errors import RWKVHubError
from ..core.logprobs import TokenLogprob

VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("protocol.schema.json")
# A request's own stop strings (the format's come on top): the schema's `params.stop` says the same, and the
# OpenAI routes check the same bounds.
MAX_STOPS = 16
MAX_STOP_CHARS = 1000
_SURROGATE = re.compile("[\ud800-\udfff]")


class ProtocolError(RWKVHubError):
    """A message that cannot be taken: `code` is the protocol's, `param` the field at fault when one is."""

    def __init__(self, code: str, message: str, request_id: str | None = None, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.request_id = request_id
        self.param = param


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


def loads(text: str | bytes, max_depth: int) -> Any:
    """Decode JSON that a client sent (a WebSocket message or an HTTP body); raises ProtocolError.

    Nesting deeper than `max_depth` is refused, also when it is so deep that the decoder itself gives up
    (a RecursionError: the config keeps `max_json_depth` well below that depth). A lone UTF-16 surrogate
    (`"\\ud800"`) is valid JSON but not text: it is refused here, naming where it is, before it reaches
    a tokenizer or a reply that must be encoded as UTF-8.
    """
    deep = f"the message is nested deeper than {max_depth} levels"
    try:
        data = json.loads(text)
    except RecursionError:
        raise ProtocolError("bad_request", deep) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError("bad_json", f"the message is not valid JSON ({e})") from None
    rid = data.get("id") if isinstance(data, dict) else None
    rid = rid if isinstance(rid, str) and not _SURROGATE.search(rid) else None
    if depth(data, max_depth) > max_depth:
        raise ProtocolError("bad_request", deep, rid)
    where = _lone_surrogate(data)
    if where is not None:
        param = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in where).lstrip(".") or None
        message = "a lone UTF-16 surrogate (such as \\ud800) is not text; send whole characters"
        raise ProtocolError("bad_request", f"{param or 'the message'}: {message}", rid, param)
    return data


def _lone_surrogate(value: Any) -> list[str | int] | None:
    """The path to the first string (or object key) holding a lone surrogate, or None.

    json.loads joins a valid pair (`"\\ud83d\\ude00"`) into one character, so any surrogate left in
    decoded JSON is a lone one. The data's depth has been checked, so the walk is short.
    """
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        v, path = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return path
        elif isinstance(v, dict):
            for k, x in v.items():
                if _SURROGATE.search(k):
                    return path
                stack.append((x, [*path, k]))
        elif isinstance(v, list):
            stack.extend((x, [*path, i]) for i, x in enumerate(v))
    return None


def parse(text: str | bytes, max_depth: int) -> dict[str, Any]:
    """Decode and validate one client message; raises ProtocolError."""
    data = loads(text, max_depth)
    if not isinstance(data, dict):
        raise ProtocolError("bad_request", "a message must be a JSON object with a 'type'")
    rid = data.get("id") if isinstance(data.get("id"), str) else None
    import jsonschema

    err = jsonschema.exceptions.best_match(validator().iter_errors(data))
    if err is not None:
        where = "/".join(str(p) for p in err.absolute_path) or "the message"
        code = "unknown_type" if list(err.absolute_path) == ["type"] else "bad_request"
        if err.validator in ("anyOf", "oneOf") and not err.absolute_path and data.get("type") == "chat":
            raise ProtocolError(code, "a chat request needs 'messages', 'message' or 'input'", rid)
        text = "does not match any accepted form" if err.validator in ("anyOf", "oneOf") else err.message
        if err.validator in ("maxLength", "maxItems"):  # jsonschema's message starts with the whole value
            unit = "characters" if err.validator == "maxLength" else "items"
            text = f"too long: at most {err.validator_value} {unit}"
        raise ProtocolError(code, f"{where}: {_short(text)}", rid)
    return data


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[:limit] + "..."


def logprob_json(entry: TokenLogprob) -> dict[str, Any]:
    """A token's log probability on the wire (the WebSocket deltas and the OpenAI chat route): its text,
    its bytes (to join a character split across tokens), and the alternatives, best first."""

    def one(text: str, raw: bytes, logprob: float) -> dict[str, Any]:
        return {"token": text, "bytes": list(raw), "logprob": logprob}

    top = [one(b.decode("utf-8", "replace"), b, v) for _, b, v in entry.top]
    return one(entry.text, entry.bytes, entry.logprob) | {"top_logprobs": top}
