"""Commands on an editor's selection (rewrite, explain, docstring, translate) as instruction requests.

Each command is the instruction format with the selection as its input, so any model that follows the
RWKV guide's `Instruction:`/`Input:`/`Response:` layout can serve it, and a plugin's `prepare_request` sees
it like any other request. The reply ends at the format's turn end (a blank line): code with blank lines
inside comes back in its first paragraph only, a limit of the prompt layout the public models know.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.errors import RWKVHubError

COMMANDS = ("rewrite", "explain", "docstring", "translate")
MAX_SELECTION_CHARS = 16_000
MAX_TOKENS = {"rewrite": 512, "explain": 300, "docstring": 160, "translate": 512}


class SelectionError(RWKVHubError):
    """A selection command is unknown or lacks what it needs."""


def _code(language: str | None) -> str:
    return f"{language} code" if language else "code"


def instruction(command: str, language: str | None, *, ask: str = "", target: str = "") -> str:
    """The instruction line for a command."""
    if command == "rewrite":
        if not ask.strip():
            raise SelectionError("rewrite needs an instruction: what should change in the selection")
        return f"Rewrite this {_code(language)} as follows: {ask.strip()}. Answer with the new code only."
    if command == "explain":
        return f"Explain what this {_code(language)} does, in a few sentences."
    if command == "docstring":
        return f"Write a docstring for this {_code(language)}. Answer with the docstring only."
    if command == "translate":
        return f"Translate this text into {target.strip() or 'English'}. Answer with the translation only."
    raise SelectionError(f"unknown selection command {command!r}; commands are {', '.join(COMMANDS)}")


def request(msg: Mapping[str, Any]) -> dict[str, Any]:
    """A hub request (instruction format) for a selection command message."""
    command, text = msg["command"], msg["text"]
    if not text.strip():
        raise SelectionError(f"{command} needs a non-empty selection")
    if len(text) > MAX_SELECTION_CHARS:
        raise SelectionError(f"the selection has {len(text):,} characters; at most {MAX_SELECTION_CHARS:,}")
    inst = instruction(command, msg.get("language"), ask=msg.get("instruction", ""), target=msg.get("target", ""))
    params = {"max_tokens": MAX_TOKENS[command]} | dict(msg.get("params") or {})
    req: dict[str, Any] = {"format": "instruction", "input": {"instruction": inst, "input": text}, "params": params}
    if msg.get("preset"):
        req["preset"] = msg["preset"]
    return req
