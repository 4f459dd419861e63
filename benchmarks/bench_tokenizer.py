"""Compare rwkv-hub's World tokenizer with the official TRIE tokenizer on 1 MB of mixed text.

Prints load, encode and decode times and the encode speed ratio, checks that the ids are identical, and
writes the "tokenizer" section of benchmarks/RESULTS.md (the `<!-- bench:tokenizer -->` markers that
bench_runtime.py uses for its sections), leaving the other sections as they are.
"""

from __future__ import annotations

import argparse
import datetime
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

from rwkv_hub.bench import machine_info, write_results_section
from rwkv_hub.core.tokenizer import WorldTokenizer
from rwkv_hub.core.tokenizer.world import official_vocab_path

RESULTS = Path(__file__).with_name("RESULTS.md")
NAME = "tokenizer"
PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog, and RWKV reads it one token at a time.",
    "User: What is a recurrent neural network?\n\nAssistant: A network that keeps a state between steps.",
    "人工智能正在改变我们的生活方式，语言模型可以写诗、翻译和回答问题。",
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。",
    'def forward(self, x: Tensor) -> Tensor:\n    """Apply the layer."""\n    return self.proj(x) + x\n',
    "for (int i = 0; i < n; i++) {\n\tsum += a[i] * b[i];\n}\n",
    "Emoji 😀🎉👍🏽 and symbols → ≤ ∑ ∞ — “quotes” …",
    "    \n\n\t\t  indentation and blank lines   \n",
]


def sample_text(nbytes: int, seed: int = 0) -> str:
    """Paragraphs in random order until the UTF-8 text reaches nbytes (cut at a character boundary)."""
    rng, parts, size = random.Random(seed), [], 0
    while size < nbytes:
        p = rng.choice(PARAGRAPHS) + rng.choice([" ", "\n", "\n\n"])
        parts.append(p)
        size += len(p.encode())
    return "".join(parts).encode()[:nbytes].decode("utf-8", errors="ignore")


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median seconds over repeats, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def section(rows: list[tuple[str, float, float, float]], nbytes: int, ratio: float, equal: bool, cmd: str) -> str:
    def mb_s(s: float) -> str:
        return f"{nbytes / s / 1e6:,.1f}"

    m = machine_info()
    lines = [
        f"<!-- bench:{NAME} -->",
        f"## Tokenizer: World vocabulary, encode and decode of {nbytes / 1e6:g} MB of mixed text",
        "",
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {m['cpu']}, {m['cores']} cores; rwkv {m['rwkv']}, rwkv-hub {m['rwkv_hub']}, Python {m['python']}",
        f"- command: `{cmd}`",
        "- text: English, Chinese, Japanese, code, emoji and whitespace paragraphs in random order; medians of runs",
        "",
        "| tokenizer | load s | encode s | encode MB/s | decode s | decode MB/s |",
        "|---|---|---|---|---|---|",
        *(f"| {n} | {ld:.2f} | {e:.4f} | {mb_s(e)} | {d:.4f} | {mb_s(d)} |" for n, ld, e, d in rows),
        "",
        f"- **{'MET' if ratio >= 10 else 'NOT MET'}**: encode >= 10x the official TRIE tokenizer: {ratio:.1f}x",
        f"- ids identical to the official tokenizer's: {'yes' if equal else 'NO'}",
        f"<!-- /bench:{NAME} -->",
    ]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    write_results_section(path, NAME, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bytes", type=int, default=1_000_000, help="size of the text in UTF-8 bytes")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--output", type=Path, default=RESULTS, help="results file; '-' to only print")
    args = p.parse_args(argv)
    text = sample_text(args.bytes)
    nbytes = len(text.encode())

    rows, ids = [], {}
    makers = [
        ("official TRIE_TOKENIZER", lambda: TRIE_TOKENIZER(str(official_vocab_path())), max(1, args.repeats // 2)),
        ("rwkv-hub WorldTokenizer (C)", WorldTokenizer, args.repeats),
        ("rwkv-hub WorldTokenizer (pure Python)", lambda: WorldTokenizer(native=False), 1),
    ]
    for name, make, repeats in makers:
        load, tok = timed(make, 1)
        enc, ids[name] = timed(lambda tok=tok: tok.encode(text), repeats)
        dec, out = timed(lambda tok=tok, name=name: tok.decode(ids[name]), repeats)
        assert out == text, f"{name} does not decode its own encoding back to the text"
        rows.append((name, load, enc, dec))
        print(f"{name}: load {load:.2f} s, encode {enc:.4f} s ({nbytes / enc / 1e6:.1f} MB/s), decode {dec:.4f} s")

    official = rows[0][0]
    equal = len({tuple(v) for v in ids.values()}) == 1
    ratio = rows[0][2] / rows[1][2]
    print(f"encode speed ratio, C vs official: {ratio:.1f}x; identical ids: {equal} ({len(ids[official]):,} tokens)")
    cmd = shlex.join(["python", "benchmarks/bench_tokenizer.py", *(sys.argv[1:] if argv is None else argv)])
    if str(args.output) != "-":
        write_section(args.output, section(rows, nbytes, ratio, equal, cmd))
        print(f"wrote the {NAME} section of {args.output}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
