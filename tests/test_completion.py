"""Where editor completions end: golden cuts on Python and JavaScript snippets."""

from __future__ import annotations

import pytest

from rwkv_hub.hub.completion import CompletionRules, block_indent, clip_prefix, cut, rules_for, window
from rwkv_hub.hub.selection import SelectionError, instruction, request

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


def test_the_prefix_window_starts_at_a_line_and_stays_put_while_typing():
    lines = [f"    value_{i} = compute({i})  # step {i}\n" for i in range(2000)]
    source = "".join(lines)
    first = window(source, 8000)
    assert len(first) <= 8000 and source.endswith(first) and (source[-len(first) - 1] == "\n")
    assert len(first) >= 8000 * 3 // 4 - len(lines[0])  # a quarter budget of slack at most
    typed = source + "resu"
    assert window(typed, 8000) == first + "resu"  # the same start: the new prompt extends the old one
    later = source + "x" * 2500  # a quarter budget on, the start moves once
    assert not window(later, 8000).startswith(first[:100])
    assert window("short\ntext", 8000) == "short\ntext"
    for text in (source, typed, later, source[:12345], source[:5000]):  # what a client sends, windowed
        assert window(clip_prefix(text)) == window(text) and len(clip_prefix(text)) < 10_000
    no_lines = "y" * 9000
    assert 6000 <= len(window(no_lines, 8000)) <= 8000  # no line start to cut at: the step mark itself


def test_max_lines_overrides_the_language_budget():
    assert rules_for("python", 2).max_lines == 2 and rules_for("python").max_lines == 8
    assert rules_for("markdown", 5) == CompletionRules(max_lines=5, stop_at_dedent=False)


def test_selection_instructions():
    assert instruction("explain", "python") == "Explain what this python code does, in a few sentences."
    assert "into French" in instruction("translate", None, target="French")
    assert "into English" in instruction("translate", None)
    assert instruction("rewrite", "rust", ask="use iterators") == (
        "Rewrite this rust code as follows: use iterators. Answer with the new code only."
    )
    with pytest.raises(SelectionError, match="rewrite needs an instruction"):
        instruction("rewrite", "rust", ask="  ")
    with pytest.raises(SelectionError, match="unknown selection command 'summarise'"):
        instruction("summarise", None)
    req = request({"command": "docstring", "text": "def f(): pass", "params": {"temperature": 0}})
    assert req["format"] == "instruction" and req["input"]["input"] == "def f(): pass"
    assert req["params"] == {"max_tokens": 160, "temperature": 0}
    with pytest.raises(SelectionError, match="non-empty selection"):
        request({"command": "explain", "text": "  \n"})
    with pytest.raises(SelectionError, match="at most 16,000"):
        request({"command": "explain", "text": "x" * 16_001})
