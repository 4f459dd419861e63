"""Benchmark editor completion: time to first token after typing 5 more characters in a 2,000-line file.

    python benchmarks/bench_completion.py [--model builtin|0.19b] [--strategy "cpu fp32"] [--positions 7]

A 2,000-line Python file (the first 2,000 lines of the standard library's `argparse.py`) is completed
through the hub as the daemon does it (the `prefix` completion format: the last 8,000 characters before
the cursor). At each of several cursor positions, a first request reads the file up to the cursor; the
user then types the next 5 characters of the file and a second request is made. Its time to first
token is measured with the prefix cache (the state of the first request's prompt is reused: only the
new characters and the tail before them are read) and without it (the whole window is read again).
Results go to the "Completion" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_engine import checkpoint, with_engine  # noqa: E402

import rwkv_hub  # noqa: E402
from rwkv_hub.bench import machine_info, write_results_section  # noqa: E402
from rwkv_hub.core.prefix_cache import PrefixCache  # noqa: E402
from rwkv_hub.hub.hub import Hub  # noqa: E402
from rwkv_hub.hub.plugins import PluginHost  # noqa: E402

LINES = 2000
TYPED = 5


def source_file() -> str:
    text = Path(argparse.__file__).read_text()
    lines = text.split("\n")
    if len(lines) < LINES:
        raise SystemExit(f"{argparse.__file__} has only {len(lines)} lines")
    return "\n".join(lines[:LINES]) + "\n"


def cursors(text: str, n: int) -> list[int]:
    """Cursor offsets in the last fifth of the file, each after some code on its line (mid-line typing)."""
    lines = text.split("\n")
    out = []
    for k in range(n):
        line_no = LINES - 400 + k * (380 // max(1, n - 1))
        while not lines[line_no].strip() or len(lines[line_no].strip()) < 2 * TYPED:
            line_no += 1
        start = sum(len(x) + 1 for x in lines[:line_no])
        indent = len(lines[line_no]) - len(lines[line_no].lstrip())
        out.append(start + indent + 2)  # two characters into the line's code
    return out


async def _typing(engine, text: str, offsets: list[int], warm: bool) -> list[dict]:
    hub = Hub(engine, PluginHost(entry_points=False).load())
    params = {"temperature": 0, "max_tokens": 4}
    rows = []
    for off in offsets:
        req = {"language": "python", "path": "/bench/argparse.py", "params": params}
        if warm:  # the request made before the user typed on
            await hub.complete(req | {"prefix": text[:off]}).text()
        s = hub.complete(req | {"prefix": text[: off + TYPED]})
        await s.text()
        rows.append({"ttft_s": s.stats.first_token_s, "prompt": s.stats.prompt_tokens, "cached": s.stats.cached_tokens})
    return rows


def measure(model, text: str, offsets: list[int], cache: bool) -> list[dict]:
    extra = {"cache": PrefixCache(2**30)} if cache else {}
    return with_engine(model, lambda engine: _typing(engine, text, offsets, cache), **extra)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin", choices=["builtin", "0.19b"])
    ap.add_argument("--strategy", default="cpu fp32")
    ap.add_argument("--positions", type=int, default=7)
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    a = ap.parse_args()
    model = rwkv_hub.load(None if a.model == "builtin" else checkpoint(a.model), a.strategy)
    text = source_file()
    offsets = cursors(text, a.positions)
    measure(model, text, offsets[:1], True)  # warm-up: kernels compiled, pages touched
    cached = measure(model, text, offsets, True)
    cold = measure(model, text, offsets, False)
    med = {k: statistics.median(r["ttft_s"] for r in rows) for k, rows in (("cached", cached), ("cold", cold))}
    prompt = statistics.median(r["prompt"] for r in cached)
    fed = statistics.median(r["prompt"] - r["cached"] for r in cached)
    print(f"median ttft with cache {1e3 * med['cached']:.1f} ms, without {1e3 * med['cold']:.1f} ms", flush=True)
    print(f"median prompt {prompt} tokens, fed with cache {fed}", flush=True)
    if a.no_write:
        return 0
    m = machine_info()
    name = "rwkv7-stdlib-demo.pth (built-in)" if a.model == "builtin" else f"random {a.model}"
    lines = [
        f"<!-- bench:completion-{a.model} -->",
        f"## Completion after typing 5 characters ({name}, `{a.strategy}`)",
        "",
        f"`python benchmarks/bench_completion.py --model {a.model} --strategy '{a.strategy}'`,"
        f" {datetime.date.today().isoformat()}, {m['cpu']}, {m['cores']} cores, torch {m['torch']}.",
        f"A {LINES}-line Python file (`argparse.py`), {a.positions} cursor positions in its last 400 lines;"
        " each request reads the `prefix` format's window (the last 8,000 characters, from a line start).",
        "Time to first token of the request made after typing 5 more characters, medians:",
        "",
        "| | time to first token | prompt tokens read |",
        "|---|---|---|",
        f"| prefix cache on (the daemon's default) | {1e3 * med['cached']:.1f} ms | {fed:.0f} of {prompt:.0f} |",
        f"| no cache | {1e3 * med['cold']:.1f} ms | {prompt:.0f} of {prompt:.0f} |",
        "",
        f"Ratio: **{med['cold'] / med['cached']:.1f}x** faster with the cache.",
        f"<!-- /bench:completion-{a.model} -->",
    ]
    write_results_section(ROOT / "benchmarks" / "RESULTS.md", f"completion-{a.model}", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
