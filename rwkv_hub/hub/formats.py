"""Prompt formats: structured input in, prompt text and stop strings out, and the answer read back.

RWKV reads strictly left to right and is more sensitive to layout than transformer models, so the
layouts follow the RWKV guide (`docs/formats.md`): a blank line ends a turn, so blank lines inside a
message are collapsed; the instruction comes before the material; few-shot examples come first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import RWKVHubError

ROLES = ("system", "user", "assistant")
MAX_FIELD_CHARS = 1_000_000  # longer input is refused before any tokenizing


class FormatError(RWKVHubError):
    """A request does not fit its format (missing input, an unknown role, a bad format definition)."""


class FormatFailed(FormatError):
    """A format's own code failed (raised something other than FormatError, or returned no Rendered): the
    plugin's fault, named in the message; `__cause__` is what it raised."""


@dataclass(frozen=True)
class Message:
    role: str  # "system", "user" or "assistant"
    content: str


@dataclass(frozen=True)
class FormatInput:
    """What a request may give a format; each format reads the fields it needs.

    `continuing`: the model's state already holds the earlier turns (a session), so render only what
    comes after them.
    """

    messages: tuple[Message, ...] = ()
    system: str = ""
    instruction: str = ""
    input: str = ""
    examples: tuple[tuple[str, str], ...] = ()
    text: str = ""
    continuing: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FormatInput:
        """Build from JSON-like data, refusing unknown fields and wrong types with a clear message."""
        known = {"messages", "system", "instruction", "input", "examples", "text", "continuing"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FormatError(f"unknown input field {unknown[0]!r}; expected some of {sorted(known)}")
        msgs = []
        for i, m in enumerate(d.get("messages") or ()):
            if not isinstance(m, Mapping) or set(m) - {"role", "content"} or "role" not in m:
                raise FormatError(f"messages[{i}] must be an object with 'role' and 'content'")
            if m["role"] not in ROLES:
                raise FormatError(f"messages[{i}].role is {m['role']!r}; expected one of {list(ROLES)}")
            msgs.append(Message(m["role"], _text(f"messages[{i}].content", m.get("content", ""))))
        examples = []
        for i, e in enumerate(d.get("examples") or ()):
            if not isinstance(e, list | tuple) or len(e) != 2:
                raise FormatError(f"examples[{i}] must be a [question, answer] pair")
            examples.append((_text(f"examples[{i}][0]", e[0]), _text(f"examples[{i}][1]", e[1])))
        cont = d.get("continuing", False)
        if not isinstance(cont, bool):
            raise FormatError("continuing must be true or false")
        return cls(
            tuple(msgs),
            **{k: _text(k, d.get(k, "")) for k in ("system", "instruction", "input")},
            examples=tuple(examples),
            text=_text("text", d.get("text", "")),
            continuing=cont,
        )


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{name} must be text, not {type(value).__name__}")
    if len(value) > MAX_FIELD_CHARS:
        raise FormatError(f"{name} has {len(value):,} characters; at most {MAX_FIELD_CHARS:,} are accepted")
    return value


@dataclass(frozen=True)
class Rendered:
    prompt: str
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptFormat:
    """A named layout. `render` makes the prompt; `read_answer` turns generated text into the answer (the
    hub reads every finished answer with it; `str.strip` also shapes the streamed deltas, see
    `StrippedDeltas`); `defaults` are sampling parameters the format suggests (a preset or the request
    overrides them; checked when the plugin loads)."""

    name: str
    description: str
    render: Callable[[FormatInput], Rendered]
    read_answer: Callable[[str], str] = str.strip
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", self.name):
            raise FormatError(f"format name {self.name!r}: use 1-64 lowercase letters, digits, '_', '-', '.'")
        if not callable(self.render) or not callable(self.read_answer):
            raise FormatError(f"format {self.name!r}: render and read_answer must be callable")


def render_with(fmt: PromptFormat, inp: FormatInput, plugin: str) -> Rendered:
    """`fmt.render(inp)`, checked. A FormatError is the format's word to the user and passes through; any
    other failure, or a result that is not a Rendered of text and a tuple of stop strings, is the plugin's
    and becomes a FormatFailed naming the format and the plugin."""
    try:
        out = fmt.render(inp)
        if not isinstance(out, Rendered):
            raise TypeError(f"render returned {type(out).__name__}, not a Rendered")
        if not isinstance(out.prompt, str):
            raise TypeError(f"render returned a prompt of type {type(out.prompt).__name__}, not text")
        if not isinstance(out.stop, tuple | list) or not all(isinstance(s, str) for s in out.stop):
            raise TypeError(f"render returned stop={out.stop!r}; stop strings are a tuple of texts")
    except FormatError:
        raise
    except Exception as e:
        raise FormatFailed(f"format {fmt.name!r} failed: {type(e).__name__}: {e} (plugin {plugin})") from e
    return out


class StrippedDeltas:
    """Streams an answer that `str.strip` reads (the default `read_answer`): leading whitespace is dropped
    until the first other character, and trailing whitespace is held back until more text follows it, so
    the deltas add up to exactly the stripped text (what `text()` returns) while they still stream."""

    def __init__(self) -> None:
        self.started = False
        self.held = ""

    def push(self, delta: str) -> str:
        """The part of `delta` (with what was held back) that is certainly in the answer."""
        if not self.started:
            delta = delta.lstrip()
            if not delta:
                return ""
            self.started = True
        text = self.held + delta
        body = text.rstrip()
        self.held = text[len(body) :]
        return body


def clean_message(text: str) -> str:
    """One message as a turn may hold it: Windows line ends made `\\n`, trailing spaces dropped, runs of
    blank lines collapsed to one line break (a blank line would end the turn), outer whitespace trimmed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{2,}", "\n", text).strip()


TURN_END = "\n\n"
CHAT_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


def render_chat(inp: FormatInput) -> Rendered:
    """`User: ...\\n\\nAssistant: ...` turns ending with `Assistant:`; a last assistant message is continued."""
    if not inp.messages and not inp.input:
        raise FormatError("the chat format needs messages (or input: one user message)")
    msgs = list(inp.messages) or [Message("user", inp.input)]
    parts = []
    if inp.system and not inp.continuing:
        parts.append(f"System: {clean_message(inp.system)}{TURN_END}")
    for m in msgs[:-1]:
        parts.append(f"{CHAT_LABELS[m.role]}: {clean_message(m.content)}{TURN_END}")
    last = msgs[-1]
    if last.role == "assistant":  # continue a reply that was started
        parts.append(f"Assistant: {clean_message(last.content)}")
    else:
        parts.append(f"{CHAT_LABELS[last.role]}: {clean_message(last.content)}{TURN_END}Assistant:")
    return Rendered("".join(parts), (TURN_END,))


def render_instruction(inp: FormatInput) -> Rendered:
    """`Instruction: ...\\n\\nInput: ...\\n\\nResponse:`: the task first, the material second."""
    if not inp.instruction:
        raise FormatError("the instruction format needs an instruction")
    prompt = f"Instruction: {clean_message(inp.instruction)}{TURN_END}"
    if inp.input:
        prompt += f"Input: {clean_message(inp.input)}{TURN_END}"
    return Rendered(prompt + "Response:", (TURN_END,))


def render_few_shot(inp: FormatInput) -> Rendered:
    """Worked examples as chat turns, then the real question, as the RWKV guide's translation example."""
    question = inp.input or next((m.content for m in reversed(inp.messages) if m.role == "user"), "")
    if not question:
        raise FormatError("the few-shot format needs input (the question)")
    if not inp.examples:
        raise FormatError("the few-shot format needs examples: [question, answer] pairs")
    shots = [Message(r, t) for q, a in inp.examples for r, t in (("user", q), ("assistant", a))]
    return render_chat(FormatInput(messages=(*shots, Message("user", question)), system=inp.system))


def render_raw(inp: FormatInput) -> Rendered:
    """The text as it is: continuation, as the public demos do."""
    if not inp.text:
        raise FormatError("the raw format needs text")
    return Rendered(inp.text, ())


BUILTIN_FORMATS = (
    PromptFormat("chat", "User/Assistant turns; a blank line ends a turn", render_chat, defaults={"top_p": 0.3}),
    PromptFormat("instruction", "Instruction, then Input, then Response", render_instruction),
    PromptFormat("few-shot", "worked examples as turns, then the question", render_few_shot),
    PromptFormat("raw", "plain continuation of the text", render_raw, read_answer=lambda s: s),
)
