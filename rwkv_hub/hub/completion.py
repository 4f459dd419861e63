"""Editor completions: the prompt a completion format builds, and where the completion should end.

A completion format turns the editor's view (prefix, suffix, language, path) into a prompt; plugins add
formats per language or for models trained with fill-in-the-middle (the `register_completion_formats`
hook). The built-in `prefix` format continues the text before the cursor, read through a window whose
start moves in steps, so that typing on extends the previous prompt and the prefix cache serves it.

A model continuing code does not know that the editor wants one statement or one block, not the rest of
the file. `CompletionRules` cut the generated text at the first sensible boundary; the hub stops the
generation there, so no tokens are spent past it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..core.errors import RWKVHubError

PREFIX_CHARS = 8000  # the most text before the cursor a completion reads
MAX_TOKENS = 64
MAX_LINES_LIMIT = 200


class CompletionError(RWKVHubError):
    """A completion format is unknown, malformed, or failed on a request."""


@dataclass(frozen=True)
class CompletionRules:
    max_lines: int = 8  # lines of completion at most (the line the cursor is on counts as the first)
    stop_at_blank_line: bool = True
    stop_at_dedent: bool = True  # a line indented less than the block at the cursor ends the completion


DEFAULT_RULES = CompletionRules()
LANGUAGE_RULES: dict[str, CompletionRules] = {
    "python": CompletionRules(max_lines=8),
    "javascript": CompletionRules(max_lines=8),
    "typescript": CompletionRules(max_lines=8),
    "markdown": CompletionRules(max_lines=3, stop_at_dedent=False),
    "plaintext": CompletionRules(max_lines=3, stop_at_dedent=False),
}


def rules_for(language: str | None, max_lines: int | None = None) -> CompletionRules:
    """The rules for a language; `max_lines` (from the editor's settings) overrides the line budget."""
    rules = LANGUAGE_RULES.get((language or "").lower(), DEFAULT_RULES)
    return rules if max_lines is None else replace(rules, max_lines=max_lines)


@dataclass(frozen=True)
class CompletionContext:
    """What the editor knows at the cursor. `rules` are the language's, with the editor's line budget."""

    prefix: str
    suffix: str = ""
    language: str | None = None
    path: str | None = None
    rules: CompletionRules = DEFAULT_RULES


@dataclass(frozen=True)
class CompletionPrompt:
    """What to run: the prompt, extra stop strings, the cut rules, and the text whose block the completion
    continues (the prefix as the model reads it: the cut judges indentation from its last lines)."""

    prompt: str
    block_prefix: str
    rules: CompletionRules = DEFAULT_RULES
    stop: tuple[str, ...] = ()
    params: dict = field(default_factory=dict)  # sampling parameters the format suggests


@dataclass(frozen=True)
class CompletionFormat:
    """A named way to prompt for completions. `languages` lists the editor language ids it is chosen for
    by default (empty: none; a request can still name it)."""

    name: str
    description: str
    build: Callable[[CompletionContext], CompletionPrompt]
    languages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", self.name):
            raise CompletionError(
                f"completion format name {self.name!r}: use 1-64 lowercase letters, digits, '_', '-', '.'"
            )
        if not callable(self.build):
            raise CompletionError(f"completion format {self.name!r}: build must be callable")
        object.__setattr__(self, "languages", tuple(lang.lower() for lang in self.languages))


def window(prefix: str, budget: int = PREFIX_CHARS) -> str:
    """The end of `prefix` a completion reads: at most `budget` characters, starting at a line start.

    The start moves in steps of a quarter budget, not with every character typed, so a request after a
    few more keystrokes reads the same text plus the new characters: its prompt extends the previous one,
    and the prefix cache feeds only what is new.
    """
    if len(prefix) <= budget:
        return prefix
    step = max(1, budget // 4)
    anchor = -(-(len(prefix) - budget) // step) * step  # the first step mark inside the budget
    nl = prefix.find("\n", anchor - 1)
    return prefix[nl + 1 :] if nl != -1 and nl + 1 < len(prefix) else prefix[anchor:]


def clip_prefix(prefix: str, keep: int = PREFIX_CHARS) -> str:
    """What a client sends of the text before the cursor: at least its last `keep` characters, cut at a
    multiple of the window's step from the document's start. A cut that slid with each keystroke would
    move `window`'s start too and defeat the prefix cache; cut in steps, it lands where `window` would."""
    step = max(1, PREFIX_CHARS // 4)
    return prefix[(max(0, len(prefix) - keep) // step) * step :]


SUFFIX_CHARS = 2000  # what a client sends of the text after the cursor


def build_prefix(ctx: CompletionContext) -> CompletionPrompt:
    """The built-in format: continue the windowed prefix as raw text; the suffix is not shown to the model
    (RWKV's public models are not trained for fill-in-the-middle)."""
    text = window(ctx.prefix)
    return CompletionPrompt(text, text, ctx.rules, ("\n\n",) if ctx.rules.stop_at_blank_line else ())


PREFIX_FORMAT = CompletionFormat("prefix", "continue the text before the cursor (any language)", build_prefix)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def block_indent(prefix: str) -> int:
    """The indentation a completion at the end of `prefix` belongs to: the cursor line's, or, on an empty
    line, the last non-empty line's (one level deeper after a line ending in ':' or '{')."""
    lines = prefix.split("\n")
    current = lines[-1]
    if current.strip():
        return _indent(current)
    for line in reversed(lines[:-1]):
        if line.strip():
            deeper = line.rstrip().endswith((":", "{", "(", "["))
            return _indent(line) + (1 if deeper else 0)
    return 0


def cut(prefix: str, text: str, rules: CompletionRules = DEFAULT_RULES) -> tuple[str, bool]:
    """(the part of the generated `text` to keep, whether a boundary was reached within it).

    Only complete lines are judged; an unfinished last line is kept until it is finished.
    """
    lines = text.split("\n")
    indent = block_indent(prefix)
    kept: list[str] = []
    for i, line in enumerate(lines):
        finished = i < len(lines) - 1
        if i > 0:  # the first piece is the rest of the cursor's line: always kept
            if rules.stop_at_blank_line and finished and not line.strip():
                return "\n".join(kept), True
            if rules.stop_at_dedent and line.strip() and _indent(line) < indent:
                return "\n".join(kept), True
        if len(kept) == rules.max_lines:
            return "\n".join(kept), True
        kept.append(line)
    return "\n".join(kept), False
