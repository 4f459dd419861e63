"""Where editor completions end: golden cuts on Python and JavaScript snippets."""

from __future__ import annotations

import pytest

from rwkv_hub.hub.completion import CompletionRules, block_indent, cut, rules_for

PY_PREFIX = "def add(a, b):\n    "
JS_PREFIX = "function add(a, b) {\n  "


@pytest.mark.parametrize(
    ("prefix", "text", "kept", "ended"),
    [
        # Python: the body ends where the code dedents back to the def's level.
        (PY_PREFIX, "total = a + b\n    return total\n\ndef other():\n", "total = a + b\n    return total", True),
        (PY_PREFIX, "return a + b\ndef other():\n    pass\n", "return a + b", True),
        # A blank line ends it even at the same indentation.
        (PY_PREFIX, "x = 1\n\n    y = 2\n", "x = 1", True),
        # An unfinished line is kept while it is being written.
        (PY_PREFIX, "total = a +", "total = a +", False),
        (PY_PREFIX, "total = a + b\n    ret", "total = a + b\n    ret", False),
        # Inside the cursor's line, text after the cursor is always kept.
        ("x = ", "compute()\nprint(x)\n", "compute()\nprint(x)\n", False),
        # JavaScript: the closing brace at the function's level ends the block.
        (JS_PREFIX, "const s = a + b;\n  return s;\n}\n", "const s = a + b;\n  return s;", True),
    ],
)
def test_golden_cuts(prefix, text, kept, ended):
    assert cut(prefix, text) == (kept, ended)


def test_line_budget_and_language_rules():
    text = "".join(f"line{i}\n" for i in range(20))
    kept, ended = cut("", text, CompletionRules(max_lines=3))
    assert kept == "line0\nline1\nline2" and ended
    assert (
        rules_for("Python").max_lines == 8 and rules_for("markdown").max_lines == 3 and rules_for(None).max_lines == 8
    )
    assert cut("Some prose\n", "more words\nwithout code\nand\nmore\n", rules_for("markdown"))[0].count("\n") == 2


def test_block_indent():
    assert block_indent("def f():\n    x = 1\n    ") == 4
    assert block_indent("def f():\n") == 1  # one level deeper after a colon: any indented body stays
    assert block_indent("if x:\n    y = 2\n") == 4
    assert block_indent("") == 0
