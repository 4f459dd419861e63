"""Measure the built-in model for its card: `python -m rwkv_hub.training.evaluate [CHECKPOINT]`.

Four figures, each through the product's own loader, tokenizer and generator:
- bits per byte on the held-out modules, next to `xz -9` and `gzip -9` on the same bytes;
- completion: greedy continuations of 20 held-out function headers that parse as Python;
- turn-taking: chat replies, sampled at the chat preset, that end at the turn boundary by themselves;
- decode speed, one sequence and 16.
It writes them into docs/default-model.md (between `<!-- bench:default-model -->` markers) and the
per-module bits into the checkpoint's JSON record, which `tests/test_default_model.py` checks against.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import gzip
import hashlib
import json
import lzma
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch

import rwkv_hub

from ..bench import machine_info, measure, write_results_section
from ..core.atomic import write_text
from ..core.builtin import BUILTIN_MODEL
from ..core.sampling import SamplingParams
from . import corpus

END_OF_TEXT = 0
COMPLETION_CASES = 20
COMPLETION_MAX_TOKENS = 240
COMPLETION_MAX_LINES = 12
TURN_TRIES = 50
TURN_MAX_TOKENS = 400
TURN_BOUNDARY = "\n\n"


def bits_per_byte(model: rwkv_hub.Model, data: bytes) -> float:
    """Total bits the model needs for `data`, read from a fresh state after an end-of-text token."""
    ids = [END_OF_TEXT, *data[:-1]]
    logits, _ = model.forward_every(ids)
    logp = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(list(data))
    return -logp.gather(1, target[:, None]).sum().item() / math.log(2)


def held_out_report(model: rwkv_hub.Model) -> dict:
    """Per module: bytes, model bits, xz -9 and gzip -9 bytes (each file alone); totals, and the compressors
    on all held-out files concatenated (which helps them: they may refer back across files)."""
    rows, cat = {}, b""
    for path in corpus.held_out_files():
        data = path.read_bytes()
        cat += data
        rows[path.stem] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "model_bits": round(bits_per_byte(model, data), 1),
            "xz9_bytes": len(lzma.compress(data, preset=9)),
            "gzip9_bytes": len(gzip.compress(data, 9, mtime=0)),
        }
    n = sum(r["bytes"] for r in rows.values())
    return {
        "modules": rows,
        "bytes": n,
        "model_bpb": sum(r["model_bits"] for r in rows.values()) / n,
        "xz9_bpb": 8 * sum(r["xz9_bytes"] for r in rows.values()) / n,
        "gzip9_bpb": 8 * sum(r["gzip9_bytes"] for r in rows.values()) / n,
        "xz9_concat_bpb": 8 * len(lzma.compress(cat, preset=9)) / n,
        "gzip9_concat_bpb": 8 * len(gzip.compress(cat, 9, mtime=0)) / n,
    }


@dataclass
class Header:
    module: str
    name: str
    prompt: str  # the def line(s) and the docstring, dedented, ending with a newline


def completion_headers(n: int = COMPLETION_CASES) -> list[Header]:
    """Up to n documented functions (public or dunder) from the held-out modules, spread evenly, in a fixed order."""
    found: list[Header] = []
    for path in corpus.held_out_files():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef) or ast.get_docstring(node) is None or len(node.body) < 2:
                continue
            if node.name.startswith("_") and not node.name.endswith("__"):
                continue
            doc = node.body[0]
            text = "\n".join(lines[node.lineno - 1 : doc.end_lineno])
            found.append(Header(path.stem, node.name, textwrap.dedent(text) + "\n"))
    found.sort(key=lambda h: (h.module, h.name))
    step = len(found) / n
    return [found[int(i * step)] for i in range(min(n, len(found)))]


def first_statement_parses(prompt: str, continuation: str) -> bool:
    """True if some prefix of the continuation's lines completes a statement so that the whole parses.

    The def line and docstring alone are not a valid function; the continuation must supply at least one
    code line (not blank, not a comment), and a compound statement counts once its block parses.
    """
    lines = continuation.split("\n")[:COMPLETION_MAX_LINES]
    for k in range(1, len(lines) + 1):
        body = lines[:k]
        if not any(s.strip() and not s.strip().startswith("#") for s in body):
            continue
        try:
            ast.parse(prompt + "\n".join(body) + "\n")
            return True
        except (SyntaxError, ValueError):
            continue
    return False


def completion_report(model: rwkv_hub.Model) -> dict:
    cases = []
    for h in completion_headers():
        run = model.generate(h.prompt, temperature=0, max_tokens=COMPLETION_MAX_TOKENS, stop=("\ndef ", "\nclass "))
        text = "".join(run)
        cases.append({"module": h.module, "name": h.name, "valid": first_statement_parses(h.prompt, text)})
    return {"cases": cases, "valid": sum(c["valid"] for c in cases), "total": len(cases)}


def chat_questions(n: int) -> list[str]:
    """Questions about held-out functions in the chat templates' words (the model never saw their answers)."""
    items = []
    for path in corpus.held_out_files():
        items.extend(corpus.documented(path, path.stem))
    items.sort(key=lambda it: (it.module, it.name))
    out = []
    for i in range(n):
        it = items[(i * 7) % len(items)]
        template = corpus.CHAT_QUESTIONS[i % len(corpus.CHAT_QUESTIONS)]
        out.append(
            template.format(
                qual=f"{it.module}.{it.name}", name=it.name, module=it.module, signature=it.signature, kind=it.kind
            )
        )
    return out


def turn_report(model: rwkv_hub.Model, params: SamplingParams) -> dict:
    """How many of TURN_TRIES seeded chat replies reach the blank line that ends a turn."""
    stopped, lengths = 0, []
    for seed, q in enumerate(chat_questions(TURN_TRIES)):
        prompt = f"User: {q}\n\nAssistant:"
        run = model.generate(prompt, params, seed=seed, max_tokens=TURN_MAX_TOKENS, stop=(TURN_BOUNDARY,))
        text = "".join(run)
        if run.result.finish_reason == "stop":
            stopped += 1
            lengths.append(len(text.encode()))
    return {
        "stopped": stopped,
        "tries": TURN_TRIES,
        "median_reply_bytes": sorted(lengths)[len(lengths) // 2] if lengths else None,
        "params": {k: getattr(params, k) for k in ("temperature", "top_p", "presence_penalty", "frequency_penalty")},
    }


def speed_report(path: Path) -> dict:
    out = {}
    for strategy in ("cpu fp32", "cpu bf16"):
        r = measure(rwkv_hub.load(path, strategy), batches=(16,))
        out[strategy] = {"decode_tok_s": r["decode_tok_s"], "batch16_tok_s": r["aggregate_tok_s"]["16"]}
    return out


def card_section(rep: dict) -> str:
    h, c, speed = rep["held_out"], rep["completion"], rep["speed"]
    lines = [
        "<!-- bench:default-model -->",
        f"Measured {rep['date']} on {rep['machine']} with `python -m rwkv_hub.training.evaluate`"
        f" (Python {rep['python']}).",
        "",
        f"**Held-out bits per byte** ({len(h['modules'])} modules, {h['bytes']:,} bytes; each file read alone):",
        "",
        "| | bits per byte |",
        "|---|---|",
        f"| this model | **{h['model_bpb']:.3f}** |",
        f"| `xz -9`, each file alone | {h['xz9_bpb']:.3f} |",
        f"| `xz -9`, all files concatenated | {h['xz9_concat_bpb']:.3f} |",
        f"| `gzip -9`, each file alone | {h['gzip9_bpb']:.3f} |",
        f"| `gzip -9`, all files concatenated | {h['gzip9_concat_bpb']:.3f} |",
        "",
        f"**Completion:** {c['valid']} of {c['total']} held-out function headers get a greedy continuation whose"
        " first statement parses. Valid: "
        + ", ".join(f"`{x['module']}.{x['name']}`" for x in c["cases"] if x["valid"])
        + ". Not valid: "
        + ", ".join(f"`{x['module']}.{x['name']}`" for x in c["cases"] if not x["valid"])
        + ".",
        "",
        "**Turn-taking** (chat layout, seeds 0-49, at most 400 bytes per reply):",
        "",
        "| sampling | replies ending at the blank line | median reply |",
        "|---|---|---|",
    ]
    for t in rep["turns"]:
        p = t["params"]
        lines.append(
            f"| temperature {p['temperature']}, top_p {p['top_p']}, presence {p['presence_penalty']},"
            f" frequency {p['frequency_penalty']} | {t['stopped']} of {t['tries']} | {t['median_reply_bytes']} bytes |"
        )
    lines += ["", "**Decode speed** (tokens are bytes):", "", "| strategy | 1 sequence | 16 sequences |"]
    lines.append("|---|---|---|")
    for s, v in speed.items():
        lines.append(f"| `{s}` | {v['decode_tok_s']:,.0f} tok/s | {v['batch16_tok_s']:,.0f} tok/s |")
    lines.append("<!-- /bench:default-model -->")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rwkv_hub.training.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", type=Path, default=BUILTIN_MODEL)
    ap.add_argument("--card", type=Path, default=Path("docs/default-model.md"))
    ap.add_argument("--skip-speed", action="store_true", help="leave out the decode-speed measurement")
    a = ap.parse_args(argv)
    model = rwkv_hub.load(a.checkpoint, "cpu fp32")
    info = machine_info()
    rep = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}",
        "python": info["python"],
        "held_out": held_out_report(model),
    }
    print(f"held-out: {rep['held_out']['model_bpb']:.3f} bits/byte (xz -9 {rep['held_out']['xz9_bpb']:.3f})")
    rep["completion"] = completion_report(model)
    print(f"completion: {rep['completion']['valid']} / {rep['completion']['total']}")
    chat = SamplingParams()  # the chat preset: ChatRWKV's and RWKV Runner's defaults
    rep["turns"] = [turn_report(model, p) for p in (chat, SamplingParams(presence_penalty=0, frequency_penalty=0))]
    print("turns:", [(t["stopped"], t["tries"]) for t in rep["turns"]])
    rep["speed"] = {} if a.skip_speed else speed_report(a.checkpoint)
    print("speed:", rep["speed"])
    record_path = a.checkpoint.with_suffix(".json")
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record["evaluation"] = rep
    write_text(record_path, json.dumps(record, indent=2) + "\n")
    if rep["speed"]:
        write_results_section(a.card, "default-model", card_section(rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
