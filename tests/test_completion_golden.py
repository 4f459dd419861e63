"""Golden completions of the built-in model on Python and JavaScript snippets: where each one ends (end of
block, line budget, token budget) through the hub, as the daemon serves them. Greedy, in fp32.

The built-in model learnt Python from the standard library and no JavaScript, so its JavaScript is poor;
the point is where the completion is cut, by the same rules in both languages.
"""

from __future__ import annotations

import asyncio

import pytest

import rwkv_hub
from rwkv_hub.core.builtin import BUILTIN_MODEL
from rwkv_hub.core.engine import Engine
from rwkv_hub.hub.completion import cut, rules_for
from rwkv_hub.hub.hub import Hub
from rwkv_hub.hub.plugins import PluginHost

READ_LINES = "import os\n\n\ndef read_lines(path):\n    "
STACK = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        "
SUM = "function sum(values) {\n  let total = 0;\n  "

GOLDEN = [
    # (language, prefix, max_lines, completion, finish_reason)
    ("python", READ_LINES, None, '"""Return a list of path in Python 3.12.', "stop"),  # the next line dedents
    ("python", STACK, None, "self.items = items\n        self.items = items\n        self.push(", "length"),
    ("python", STACK, 2, "self.items = items\n        self.items = items", "stop"),  # the line budget
    ("javascript", SUM, None, "  'letters': [],\n    'letters': [],\n    ('letters', 'letters'): ", "length"),
    ("javascript", SUM, 2, "  'letters': [],\n    'letters': [],", "stop"),
]


@pytest.fixture(scope="module")
def completions():
    async def go():
        model = rwkv_hub.load(BUILTIN_MODEL, "cpu fp32")
        async with Engine(model) as engine:
            hub = Hub(engine, PluginHost(entry_points=False).load())
            out = []
            for language, prefix, max_lines, _, _ in GOLDEN:
                req = {"prefix": prefix, "language": language, "params": {"temperature": 0}}
                stream = hub.complete(req | ({"max_lines": max_lines} if max_lines else {}))
                out.append((await stream.text(), stream.finish_reason))
            return out

    return asyncio.run(asyncio.wait_for(go(), 120))


@pytest.mark.parametrize("n", range(len(GOLDEN)))
def test_golden_completion(completions, n):
    language, prefix, max_lines, expected, reason = GOLDEN[n]
    assert completions[n] == (expected, reason)
    kept, _ = cut(prefix, expected, rules_for(language, max_lines))
    assert kept == expected  # what was sent is within the rules: cutting it again changes nothing
