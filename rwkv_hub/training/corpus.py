"""The built-in model's training text, rebuilt offline from the running interpreter's standard library.

Three kinds of document, all bytes:
- the source of every standard-library module except tests, encodings' tables and the held-out list;
- chat turns in rwkv-hub's chat layout (`User: ...\\n\\nAssistant: ...\\n\\n`), questions about functions and
  classes answered with the first paragraph of their docstrings, so a reply ends at the blank line (each
  documented item is asked about twice);
- instruction/response pairs in the instruction layout (`Instruction:`, `Input:`, `Response:`), e.g. "write
  a docstring for this function" with the function's code as input.
Everything is deterministic for a given interpreter: files in sorted order, templates picked by a seeded RNG.
Documents are joined with byte 0, the end-of-text token.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Modules training never sees; bits per byte and completion are measured on them (docs/default-model.md).
HELD_OUT = (
    "bisect",
    "calendar",
    "colorsys",
    "copy",
    "difflib",
    "fnmatch",
    "fractions",
    "glob",
    "graphlib",
    "heapq",
    "keyword",
    "numbers",
    "operator",
    "pprint",
    "queue",
    "sched",
    "shlex",
    "statistics",
    "string",
    "textwrap",
)
# Folders left out: tests, bundled wheels, generated codec tables, third-party packages.
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "encodings", "_bundled", "__pycache__"}
END_OF_TEXT = b"\x00"
MAX_ANSWER = 400
MAX_INPUT = 900


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def held_out_files(root: Path | None = None) -> list[Path]:
    root = root or stdlib_dir()
    return [root / f"{name}.py" for name in HELD_OUT if (root / f"{name}.py").is_file()]


def training_files(root: Path | None = None) -> list[Path]:
    root = root or stdlib_dir()
    held = {f"{name}.py" for name in HELD_OUT}
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        if len(rel.parts) == 1 and rel.name in held:
            continue
        out.append(p)
    return out


@dataclass
class Documented:
    """A function or class with a docstring, and where it came from."""

    module: str
    name: str
    kind: str  # "function" or "class"
    signature: str
    summary: str  # first paragraph of the docstring, on one line
    code: str  # the definition without its docstring


def summary(doc: str) -> str:
    """The first paragraph of a docstring on one line, cut at a sentence end near MAX_ANSWER."""
    para = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    text = " ".join(para.split())
    if len(text) > MAX_ANSWER:
        cut = text.rfind(". ", 0, MAX_ANSWER)
        text = text[: cut + 1] if cut > 0 else text[:MAX_ANSWER].rsplit(" ", 1)[0] + "..."
    return text


def documented(path: Path, module: str) -> Iterator[Documented]:
    """Functions and classes of a module that have a docstring (a file that does not parse yields nothing)."""
    source = path.read_text(encoding="utf-8", errors="replace")
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    lines = source.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        doc = ast.get_docstring(node)
        if not doc or node.name.startswith("_") or not node.body:
            continue
        text = summary(doc)
        if len(text) < 12:
            continue
        first = node.body[0]
        rest = node.body[1:]
        head = "\n".join(lines[node.lineno - 1 : first.lineno - 1]).rstrip()
        body = "\n".join(lines[rest[0].lineno - 1 : node.end_lineno]) if rest else ""
        code = textwrap.dedent(head + "\n" + body).strip("\n")
        if isinstance(node, ast.ClassDef):
            sig, kind = "", "class"
        else:
            sig, kind = "(" + ast.unparse(node.args) + ")", "function"
        yield Documented(module, node.name, kind, sig, text, code[:MAX_INPUT])


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


CHAT_QUESTIONS = (
    "What does `{qual}` do?",
    "Explain {qual} in one sentence.",
    "What is `{name}` in the {module} module for?",
    "I am reading the {module} module. What does {name}{signature} do?",
    "Can you tell me what the {kind} {name} does?",
)
INSTRUCTIONS = (
    ("Write a docstring for this Python {kind}.", "{summary}"),
    ("Explain what this Python {kind} does.", "{summary}"),
    ("Name the module this Python {kind} comes from.", "It comes from the `{module}` module."),
)


def chat_turn(item: Documented, rng: random.Random) -> str:
    q = rng.choice(CHAT_QUESTIONS).format(
        qual=f"{item.module}.{item.name}", name=item.name, module=item.module, signature=item.signature, kind=item.kind
    )
    return f"User: {q}\n\nAssistant: {item.summary}\n\n"


def instruction_pair(item: Documented, rng: random.Random) -> str:
    task, answer = rng.choice(INSTRUCTIONS)
    fields = {"kind": item.kind, "summary": item.summary, "module": item.module}
    return f"Instruction: {task.format(**fields)}\n\nInput: {item.code}\n\nResponse: {answer.format(**fields)}\n\n"


def build(root: Path | None = None, seed: int = 0) -> tuple[bytes, dict[str, int]]:
    """The training bytes and a count of bytes per kind of document."""
    root = root or stdlib_dir()
    rng = random.Random(seed)
    docs: list[bytes] = []
    counts = {"source": 0, "chat": 0, "instruction": 0}
    items: list[Documented] = []
    for path in training_files(root):
        data = path.read_bytes()
        docs.append(data)
        counts["source"] += len(data)
        items.extend(documented(path, module_name(root, path)))
    rng.shuffle(items)
    # Two passes of conversations of one to four turns (each item asked twice, in different words), then
    # instruction pairs for half of the items.
    for _ in range(2):
        i = 0
        while i < len(items):
            n = rng.randint(1, 4)
            text = "".join(chat_turn(it, rng) for it in items[i : i + n]).encode()
            docs.append(text)
            counts["chat"] += len(text)
            i += n
        rng.shuffle(items)
    for it in items[: len(items) // 2]:
        text = instruction_pair(it, rng).encode()
        docs.append(text)
        counts["instruction"] += len(text)
    rng.shuffle(docs)
    return END_OF_TEXT.join(docs) + END_OF_TEXT, counts
