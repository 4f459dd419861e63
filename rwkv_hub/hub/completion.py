"""Where an editor completion should end: the end of the block, a blank line, or a line budget.

A model continuing code does not know that the editor wants one statement or one block, not the rest of
the file. These rules cut the generated text at the first sensible boundary; the daemon stops the
generation there, so no tokens are spent past it.
"""

from __future__ import annotations

from dataclasses import dataclass


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


def rules_for(language: str | None) -> CompletionRules:
    return LANGUAGE_RULES.get((language or "").lower(), DEFAULT_RULES)


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
