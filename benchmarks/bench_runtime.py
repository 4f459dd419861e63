"""Benchmark rwkv-hub against the official `rwkv` package on random-weight checkpoints of real shapes.

    python benchmarks/bench_runtime.py [--shapes 0.19b,0.45b] [--strategies "cpu fp32,cpu bf16,cpu bf16i8"]
                                       [--official-strategies "cpu fp32,cpu bf16"] [--llamacpp q8_0,f16]
                                       [--quick]

Every configuration runs in its own subprocess, one after another, so peak RSS is per configuration and
runs do not disturb each other. The measurement is `rwkv_hub.bench` for both runtimes (same tokens, same
warm-up, medians of --repeats). Results go to benchmarks/RESULTS.md, one section per shape (sections of
shapes not run this time are kept). llama.cpp joins as a peer where `llama-cpp-python` and `gguf` are
installed (benchmarks/peer_llamacpp.py). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import peer_llamacpp  # noqa: E402

from rwkv_hub.bench import machine_info, parse_batches  # noqa: E402

# name -> (n_layer, n_embd, vocab_size); released RWKV-7 "World" shapes, head size 64.
SHAPES: dict[str, tuple[int, int, int]] = {
    "0.19b": (12, 768, 65536),
    "0.19b-ffn90": (12, 768, 65536),
    "0.45b": (24, 1024, 65536),
    "0.45b-ffn90": (24, 1024, 65536),
    "tiny": (2, 128, 1024),  # --quick only: a smoke test of the whole pipeline
}
# Random weights leave about half of the feed-forward's relu(k) at zero; trained models about 90% (the
# built-in model: 89-95% in every layer). These shapes shift the keys so that this share is zero, which
# rwkv-hub's value matrices turn into speed (core/sparse_ffn.py); the other runtimes read the same bytes
# either way.
FFN_ZERO_SHARE = {"0.19b-ffn90": 0.9, "0.45b-ffn90": 0.9}
OURS = ("cpu fp32", "cpu bf16", "cpu bf16i8")
OFFICIAL = ("cpu fp32", "cpu bf16")
LLAMACPP = ("q8_0", "f16")
# rwkv.cpp Q8_0 decode speed the issue quotes for the 0.19B model, measured on another machine (Zen 5 with
# AVX-512) on another day: an absolute figure, not a same-run comparison (llama.cpp's row is that).
INT8_REFERENCE_TOK_S = {"0.19b": 129.0, "0.19b-ffn90": 129.0}
MB = 10**6
CHILD_TIMEOUT_S = 3600
MARK = "BENCH-RESULT "


# ----------------------------------------------------------------------------------------------- running


def checkpoint(cache: Path, shape: str, env: dict[str, str]) -> Path:
    """The random-weight checkpoint of a shape, written once into the cache folder (bf16, released layout).

    It is written by a subprocess so that this process stays small while the measured ones run.
    """
    n_layer, n_embd, vocab = SHAPES[shape]
    path = cache / f"rwkv7-random-{shape}-L{n_layer}-D{n_embd}-V{vocab}.pth"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"writing {path} ...", flush=True)
        code = (
            "import sys; from rwkv_hub.core.synth import write_random_checkpoint as w; "
            "w(sys.argv[1], n_layer=int(sys.argv[2]), n_embd=int(sys.argv[3]), vocab_size=int(sys.argv[4]), "
            "ffn_zero_share=float(sys.argv[5]) if sys.argv[5] else None)"
        )
        share = str(FFN_ZERO_SHARE.get(shape, ""))
        cmd = [sys.executable, "-c", code, str(path), str(n_layer), str(n_embd), str(vocab), share]
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return path


def measure_bandwidth(env: dict[str, str]) -> float | None:
    """The machine's memory read bandwidth in bytes/s (`rwkv_hub.bench.read_bandwidth_bytes_per_s`), measured in
    a process of its own so that its 512 MiB buffer stays out of every measured one; None if that fails."""
    code = "from rwkv_hub.bench import read_bandwidth_bytes_per_s as r; print(r())"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
        )
        return float(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None


def _shared_options(model: Path, strategy: str, args: argparse.Namespace) -> list[str]:
    """The options both runtimes' children take, so that both measure the same thing."""
    return [
        "--model",
        str(model),
        "--strategy",
        strategy,
        "--prompt-tokens",
        str(args.prompt_tokens),
        "--decode-tokens",
        str(args.decode_tokens),
        "--repeats",
        str(args.repeats),
    ]


def ours_command(model: Path, strategy: str, args: argparse.Namespace) -> list[str]:
    opts = ["--json", *_shared_options(model, strategy, args), "--batch", ",".join(map(str, args.batch))]
    return [sys.executable, "-m", "rwkv_hub", "bench", *opts]


def official_command(model: Path, strategy: str, args: argparse.Namespace) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child-official", *_shared_options(model, strategy, args)]


def llamacpp_command(model: Path, kind: str, args: argparse.Namespace) -> list[str]:
    opts = ["--model", str(model), "--type", kind, "--prompt-tokens", str(args.prompt_tokens)]
    opts += ["--decode-tokens", str(args.decode_tokens), "--repeats", str(args.repeats)]
    if args.threads:
        opts += ["--threads", str(args.threads)]
    return [sys.executable, str(Path(peer_llamacpp.__file__).resolve()), *opts]


def combine_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One row's figures from its rounds: the median of each speed, the largest of each memory figure
    (a peak is a bound), every run of the `*_runs` lists; an error only if every round failed."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return rounds[0]

    def merge(key: str, values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, bool) or not isinstance(first, (int, float, dict, list)):
            return first
        if isinstance(first, dict):
            return {k: merge(k, [v[k] for v in values if isinstance(v, dict) and k in v]) for k in first}
        if isinstance(first, list):
            return [x for v in values for x in v]
        if all(v == first for v in values):
            return first  # a setting (prompt tokens, threads) stays as it was: the median of 512 and 512 is 512.0
        if "rss" in key or "bytes" in key:
            return max(values)
        return statistics.median(values)

    return {k: merge(k, [r[k] for r in ok if k in r]) for k in ok[0]}


def run_child(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one configuration; return its result dict, or {"error": ...} if it failed."""
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT_S, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT_S} s"}
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {r.returncode}: {tail}"}
    text = r.stdout
    if MARK in text:
        text = text.split(MARK, 1)[1]
    start = text.find("{")
    try:
        out = json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        out = None
    if not isinstance(out, dict):
        return {"error": f"no JSON result in output: {r.stdout[-300:]!r}"}
    out["wall_s"] = wall
    return out


def child_official(argv: list[str]) -> int:
    """--child-official: measure the official package in this (fresh) process and print the result."""
    p = argparse.ArgumentParser()
    p.add_argument("--child-official", action="store_true")
    p.add_argument("--model", required=True)
    p.add_argument("--strategy", required=True)
    p.add_argument("--prompt-tokens", type=int, required=True)
    p.add_argument("--decode-tokens", type=int, required=True)
    p.add_argument("--repeats", type=int, required=True)
    a = p.parse_args(argv)
    for k, v in {"RWKV_V7_ON": "1", "RWKV_JIT_ON": "1", "RWKV_CUDA_ON": "0"}.items():
        os.environ[k] = v
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # TorchScript deprecation in this torch
    from rwkv_hub.bench import bench_official

    out = bench_official(a.model, a.strategy, a.prompt_tokens, a.decode_tokens, a.repeats)
    out["machine"] = machine_info()
    print(MARK + json.dumps(out), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------- report


def _dtype(strategy: str) -> str:
    """The official strategy an rwkv-hub strategy is compared with: same dtype; int8 against bf16."""
    s = strategy.split()
    dt = s[1].removesuffix("i8") if len(s) > 1 else ""
    return f"{s[0]} {'bf16' if dt in ('i8', 'int8') else dt}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def rss_budget(weight_bytes: int) -> float:
    return 1.2 * weight_bytes + 300 * MB


def single_stream_peak(r: dict[str, Any]) -> int:
    """Peak RSS before the batched runs (the official package has none, so its peak is already that)."""
    return r.get("peak_rss_single_bytes") or r["peak_rss_bytes"]


def shape_table(results: dict[tuple[str, str], dict[str, Any]], batches: list[int]) -> list[str]:
    """Markdown table: one row per runtime x strategy, ratios against the official package at the same dtype."""
    head = ["runtime", "strategy", "decode tok/s", "vs official", "prefill tok/s", "vs official"]
    head += [f"batch {b} tok/s" for b in batches]
    head += [f"B={batches[-1]} vs official 1-seq", "load s", "weights MiB", "peak RSS 1 stream MiB"]
    head += ["RSS budget MiB", f"peak RSS with B={batches[-1]} MiB"]
    head += ["RSS before load MiB", "peak after load MiB"]
    gpu = any("peak_gpu_bytes" in r for r in results.values())
    head += ["peak GPU MiB"] if gpu else []
    head += ["threads", "load avg"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (runtime, strategy), r in results.items():
        if "error" in r:
            lines.append(f"| {runtime} | {strategy} | failed: {r['error']} |" + " |" * (len(head) - 3))
            continue
        ours = runtime == "rwkv-hub"
        off = results.get(("official", _dtype(strategy)), {}) if ours else {}
        same = "1.00x" if runtime == "official" else "-"
        agg = r.get("aggregate_tok_s", {})  # the peers' only figure is batch 1, their decode rate
        big = agg.get(str(batches[-1])) if ours else None
        row = [
            runtime,
            strategy,
            _num(r["decode_tok_s"]),
            _ratio(r["decode_tok_s"], off.get("decode_tok_s")) if ours else same,
            _num(r["prefill_tok_s"]),
            _ratio(r["prefill_tok_s"], off.get("prefill_tok_s")) if ours else same,
        ]
        for b in batches:
            v = agg.get(str(b))
            row.append(_num(v) if v is not None else ("-" if ours else "(= 1-seq)"))
        row += [
            _ratio(big, off.get("decode_tok_s")) if ours else "-",
            _num(r["load_s"], 2),
            _num(r["weight_bytes"] / 2**20),
            _num(single_stream_peak(r) / 2**20),
            _num(rss_budget(r["weight_bytes"]) / 2**20) if ours else "-",
            _num(r["peak_rss_bytes"] / 2**20) if ours else "-",
            _num(r["rss_before_load_bytes"] / 2**20) if r.get("rss_before_load_bytes") else "-",
            _num(r["peak_rss_after_load_bytes"] / 2**20) if r.get("peak_rss_after_load_bytes") else "-",
            *([_num(r["peak_gpu_bytes"] / 2**20) if "peak_gpu_bytes" in r else "-"] if gpu else []),
            str(r.get("torch_threads", "?")),
            " -> ".join("?" if x is None else f"{x:.1f}" for x in r.get("load_avg", [None, None])),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def verdicts(
    shape: str, results: dict[tuple[str, str], dict[str, Any]], batches: list[int], bandwidth: float | None = None
) -> list[str]:
    """One MET / NOT MET line per target and strategy, and with the memory read `bandwidth` (bytes/s) the
    most each strategy's single-stream decode could reach."""
    out: list[str] = []

    def ok(r: dict[str, Any] | None) -> bool:
        return bool(r) and "error" not in r

    def line(met: bool | None, text: str) -> None:
        out.append(f"- **{'n/a' if met is None else 'MET' if met else 'NOT MET'}**: {text}")

    ours = {s: r for (rt, s), r in results.items() if rt == "rwkv-hub"}
    off = {s: r for (rt, s), r in results.items() if rt == "official"}

    a, b = ours.get("cpu bf16"), off.get("cpu bf16")
    if ok(a) and ok(b):
        x = a["decode_tok_s"] / b["decode_tok_s"]
        line(
            x >= 2,
            f"single-sequence decode, cpu bf16 >= 2x official cpu bf16: {x:.2f}x "
            f"({a['decode_tok_s']:.1f} vs {b['decode_tok_s']:.1f} tok/s)",
        )
    else:
        line(None, "single-sequence decode, cpu bf16 >= 2x official cpu bf16: not measured")

    fastest = max((r for r in off.values() if ok(r)), key=lambda r: r["decode_tok_s"], default=None)
    if fastest is not None:
        best = next(st for st, r in off.items() if r is fastest)
        ratios = ", ".join(f"{s} {r['decode_tok_s'] / fastest['decode_tok_s']:.2f}x" for s, r in ours.items() if ok(r))
        out.append(
            f"- **for comparison**: the official package's fastest CPU decode in this run is {best} at "
            f"{fastest['decode_tok_s']:.1f} tok/s; rwkv-hub single-sequence decode against it: {ratios}"
        )

    if bandwidth:
        _, n_embd, vocab = SHAPES[shape]
        mapped = vocab * n_embd * 2  # the embedding: mapped from the bf16 file, one row read per token
        read = {s: r["weight_bytes"] - mapped for s, r in ours.items() if ok(r) and r["weight_bytes"] > mapped}
        ceilings = ", ".join(
            f"{s} {bandwidth / n:.0f} (reached {ours[s]['decode_tok_s'] * n / bandwidth:.0%})" for s, n in read.items()
        )
        out.append(
            f"- **for comparison**: at this machine's {bandwidth / 1e9:.1f} GB/s, reading every weight once per "
            f"token (the embedding aside), single-sequence decode can reach at most (tok/s): {ceilings}"
        )

    peer = {s: r for (rt, s), r in results.items() if rt == "llama.cpp"}
    i8 = ours.get("cpu bf16i8")
    for mine, theirs in (("cpu bf16i8", "Q8_0"), ("cpu bf16", "F16")):
        a, b = ours.get(mine), peer.get(theirs)
        if ok(a) and ok(b):
            line(
                a["decode_tok_s"] > b["decode_tok_s"],
                f"single-sequence decode, {mine} > llama.cpp {theirs} in this run: "
                f"{a['decode_tok_s']:.1f} vs {b['decode_tok_s']:.1f} tok/s "
                f"({a['decode_tok_s'] / b['decode_tok_s']:.2f}x); prefill {a['prefill_tok_s']:.1f} vs "
                f"{b['prefill_tok_s']:.1f} tok/s; peak RSS {single_stream_peak(a) / MB:,.0f} vs "
                f"{b['peak_rss_bytes'] / MB:,.0f} MB",
            )
        elif theirs in peer:
            line(None, f"{mine} against llama.cpp {theirs}: not measured ({(b or {}).get('error', 'no result')})")

    ref = INT8_REFERENCE_TOK_S.get(shape)
    if ref is None:
        line(None, f"int8 decode > rwkv.cpp Q8_0: no reference figure for the {shape} shape")
    elif ok(i8):
        line(
            i8["decode_tok_s"] > ref,
            f"int8 (cpu bf16i8) decode > {ref:g} tok/s (the issue's rwkv.cpp Q8_0 figure, measured on "
            f"another machine, not this run): {i8['decode_tok_s']:.1f} tok/s",
        )
    else:
        line(None, f"int8 (cpu bf16i8) decode > {ref:g} tok/s: not measured")

    for s, r in ours.items():
        o = off.get(_dtype(s))
        big = str(max(batches))
        agg = r.get("aggregate_tok_s", {}).get(big) if ok(r) else None
        if agg is not None and int(big) >= 16 and ok(o):
            x = agg / o["decode_tok_s"]
            line(
                x >= 8,
                f"aggregate decode, {big} sequences, {s} >= 8x official {_dtype(s)} single-sequence: "
                f"{x:.2f}x ({agg:.1f} vs {o['decode_tok_s']:.1f} tok/s)",
            )
        else:
            line(None, f"aggregate decode, 16 sequences, {s} >= 8x official single-sequence: not measured")
    for s, r in ours.items():
        o = off.get(_dtype(s))
        if ok(r) and ok(o):
            x = r["prefill_tok_s"] / o["prefill_tok_s"]
            line(
                x >= 3,
                f"prefill ({r['prompt_tokens']} tokens), {s} >= 3x official {_dtype(s)}: {x:.2f}x "
                f"({r['prefill_tok_s']:.1f} vs {o['prefill_tok_s']:.1f} tok/s)",
            )
        else:
            line(None, f"prefill, {s} >= 3x official {_dtype(s)}: not measured")
    for s, r in ours.items():
        if ok(r):
            budget = rss_budget(r["weight_bytes"])
            line(
                single_stream_peak(r) <= budget,
                f"peak RSS (load, prefill, decode of one stream), {s} <= 1.2 x weights + 300 MB: "
                f"{single_stream_peak(r) / MB:,.0f} MB vs budget {budget / MB:,.0f} MB "
                f"(weights {r['weight_bytes'] / MB:,.0f} MB; with {batches[-1]} streams' states "
                f"{r['peak_rss_bytes'] / MB:,.0f} MB)",
            )
        else:
            line(None, f"peak RSS, {s}: not measured")
    return out


def section_key(shape: str, args: argparse.Namespace) -> str:
    """A section per shape, and per machine where --machine names one, so that runs on several machines
    stand side by side."""
    return f"{shape}-{args.machine}" if args.machine else shape


def _ffn_text(shape: str) -> str:
    share = FFN_ZERO_SHARE.get(shape)
    return f", feed-forward keys shifted so that {share:.0%} of relu(k) is zero, as in trained models" if share else ""


def _bandwidth_text(bandwidth: float | None) -> str:
    if not bandwidth:
        return "not measured"
    return f"{bandwidth / 1e9:.1f} GB/s (the fastest of 5 sums over 512 MiB on torch's threads, before the rows)"


def _rounds(args: argparse.Namespace) -> str:
    return f" in {args.rounds} rounds (the median of the rounds; peaks: the largest)" if args.rounds > 1 else ""


def section(
    shape: str,
    results: dict,
    batches: list[int],
    args: argparse.Namespace,
    command: str,
    bandwidth: float | None = None,
) -> str:
    m = machine_info()
    n_layer, n_embd, vocab = SHAPES[shape]
    ram = f"{m['ram_bytes'] / 2**30:.1f} GiB" if m["ram_bytes"] else "?"
    key = section_key(shape, args)
    on = f", on {args.machine}" if args.machine else ""
    lines = [
        f"<!-- bench:{key} -->",
        f"## {shape.upper()}: {n_layer} layers x {n_embd}, vocab {vocab} (random bf16 weights{_ffn_text(shape)}){on}",
        "",
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {ram} RAM; torch {m['torch']}, "
        f"rwkv {m['rwkv']}, rwkv-hub {m['rwkv_hub']}, Python {m['python']}",
        f"- command: `{command}`",
        f"- settings: prefill {args.prompt_tokens} tokens, decode runs of {args.decode_tokens} tokens, "
        f"medians of {args.repeats} runs, one subprocess per row, run one after another{_rounds(args)}, "
        f"threads: {args.threads or 'torch default'}",
        f"- memory read bandwidth: {_bandwidth_text(bandwidth)}",
        "",
        *shape_table(results, batches),
        "",
        "Targets:",
        "",
        *verdicts(shape, results, batches, bandwidth),
    ]
    busy = [
        f"{rt} {st}"
        for (rt, st), r in results.items()
        if max((x or 0) for x in r.get("load_avg", [0])) > (m["cores"] or 1)
    ]
    if busy:
        lines += [
            "",
            f"_Warning: the 1-minute load average exceeded the {m['cores']} cores during: {', '.join(busy)}. "
            "Other processes shared the CPU, so those timings are low and noisy; rerun on a quiet machine._",
        ]
    if args.quick:
        lines += ["", "_Quick smoke-test run: tiny shape and few tokens; the figures and verdicts mean nothing._"]
    lines.append(f"<!-- /bench:{key} -->")
    return "\n".join(lines)


TITLE = """# rwkv-hub runtime benchmark

Written by `benchmarks/bench_runtime.py` (see benchmarks/README.md); one section per model shape, replaced
each time that shape is benchmarked. Ratios compare rwkv-hub with the official `rwkv` package at the same
dtype, measured in the same run (int8 is compared with official bf16).
"""


def _section_order(key: str) -> tuple[int, str]:
    """Shapes in SHAPES order, each followed by its other machines' sections; other sections keep their places
    after them (the sort is stable)."""
    shape = key.split("-")[0]
    return (list(SHAPES).index(shape), key) if shape in SHAPES else (len(SHAPES), "")


def write_results(path: Path, sections: dict[str, str]) -> None:
    """Replace the given shapes' sections in `path`, keeping the others (ordered as SHAPES)."""
    old = path.read_text() if path.exists() else ""
    pattern = r"<!-- bench:([\w.-]+) -->\n.*?<!-- /bench:\1 -->"
    kept = {m.group(1): m.group(0) for m in re.finditer(pattern, old, flags=re.S)}
    kept.update(sections)
    order = sorted(kept, key=_section_order)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TITLE + "\n" + "\n\n".join(kept[k] for k in order) + "\n")


# ----------------------------------------------------------------------------------------------- main


def _machine_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9.]*", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use letters, digits and dots only")
    return text


def _list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--child-official" in argv:
        return child_official(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", type=_list, default=["0.19b", "0.45b"], help=f"comma-separated, of: {', '.join(SHAPES)}")
    p.add_argument("--strategies", type=_list, default=list(OURS), help="rwkv-hub strategies, comma-separated")
    p.add_argument(
        "--official-strategies", type=_list, default=list(OFFICIAL), help="official package strategies ('' for none)"
    )
    p.add_argument(
        "--llamacpp",
        type=_list,
        default=list(LLAMACPP),
        help="llama.cpp GGUF types to measure as a peer, of q8_0,f16 ('' for none; skipped if not installed)",
    )
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--batch", type=parse_batches, default=[1, 4, 16])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every row this many times, all rows once per round, and report the median of the "
        "rounds: on a shared machine whose speed drifts over minutes, rows run minutes apart are otherwise "
        "compared at different speeds",
    )
    p.add_argument("--threads", type=int, help="torch threads in every run (OMP_NUM_THREADS); default: torch's choice")
    p.add_argument("--cache", type=Path, default=ROOT / "bench-out", help="where checkpoints are written and reused")
    p.add_argument(
        "--machine",
        type=_machine_name,
        default="",
        help="a short name for this machine (letters, digits, dots): its results get sections of their own "
        "instead of replacing the shape's main ones",
    )
    p.add_argument("--output", type=Path, help="results file (default benchmarks/RESULTS.md; with --quick, in --cache)")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny shape, few tokens, one pass")
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.prompt_tokens, args.decode_tokens, args.batch, args.repeats = ["tiny"], 32, 8, [1, 4], 2
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, not {args.rounds}")
    bad = [k for k in args.llamacpp if k not in LLAMACPP]
    if bad:
        p.error(f"unknown llama.cpp type(s) {', '.join(bad)}; choose from {', '.join(LLAMACPP)}")
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        p.error(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    output = args.output or (args.cache / "RESULTS-quick.md" if args.quick else ROOT / "benchmarks" / "RESULTS.md")
    command = "python benchmarks/bench_runtime.py" + "".join(f" {shlex.quote(a)}" for a in argv)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    off_env = {**env, "RWKV_V7_ON": "1", "RWKV_JIT_ON": "1", "RWKV_CUDA_ON": "0"}
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5 and not args.threads:
        print(
            f"warning: load average {load:.1f} on {cores} cores: other processes are running. torch's thread pool "
            "stalls badly when a core it uses is busy (decode can be 10-30x slower); consider --threads 1.",
            flush=True,
        )
    bandwidth = measure_bandwidth(env)
    print(f"memory read bandwidth: {_bandwidth_text(bandwidth)}", flush=True)
    sections: dict[str, str] = {}
    for shape in args.shapes:
        model = checkpoint(args.cache, shape, env)
        runs = [("rwkv-hub", s, ours_command(model, s, args), env) for s in args.strategies]
        runs += [("official", s, official_command(model, s, args), off_env) for s in args.official_strategies]
        missing = peer_llamacpp.available() if args.llamacpp else None
        if missing:
            print(f"llama.cpp not measured: {missing}", flush=True)
        else:
            runs += [("llama.cpp", k.upper(), llamacpp_command(model, k, args), env) for k in args.llamacpp]
        rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for n in range(args.rounds):
            for runtime, strategy, cmd, child_env in runs:
                tag = f" (round {n + 1} of {args.rounds})" if args.rounds > 1 else ""
                print(f"[{shape}] {runtime} {strategy}{tag} ...", end=" ", flush=True)
                if runtime == "llama.cpp" and n == 0:  # convert in a process of its own, so the measured one only loads
                    subprocess.run([*cmd, "--convert-only"], capture_output=True, env=child_env, cwd=ROOT)
                r = run_child(cmd, child_env)
                rounds.setdefault((runtime, strategy), []).append(r)
                if "error" in r:
                    print(f"FAILED ({r['error']})", flush=True)
                else:
                    print(
                        f"decode {r['decode_tok_s']:.1f} tok/s, prefill {r['prefill_tok_s']:.1f} tok/s, "
                        f"peak RSS {r['peak_rss_bytes'] / 2**20:,.0f} MiB ({r['wall_s']:.0f} s)",
                        flush=True,
                    )
        results = {key: combine_rounds(rs) for key, rs in rounds.items()}
        raw = args.cache / f"results-{shape}.json"
        rows = [{"runtime": rt, "strategy": st, **r} for (rt, st), r in results.items()]
        raw.write_text(json.dumps({"command": command, "results": rows}, indent=1) + "\n")
        key = section_key(shape, args)
        sections[key] = section(shape, results, args.batch, args, command, bandwidth)
        print()
        print(sections[key])
        print()
    write_results(output, sections)
    print(f"wrote {output} (every run's figures: {args.cache}/results-<shape>.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
