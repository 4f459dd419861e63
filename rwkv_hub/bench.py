"""Measure a model's speed and memory on this machine: decode, prefill, batched decode, load time, peak RSS.

Every figure is the median of `--repeats` timed runs after a short warm-up. Tokens are random ids, so
any checkpoint (including random-weight ones) gives real timings. Decode feeds one token per
`model.forward` call, as a chat loop does; batched decode advances B sequences one token each per
`model.forward_batch` call and reports the total tokens per second of all B. Peak RSS is the process's
high-water mark (loading included), so run one configuration per process to compare memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .core import heap
from .core.atomic import write_text

DEFAULT_PROMPT_TOKENS = 512
DEFAULT_DECODE_TOKENS = 64
DEFAULT_BATCHES = (1, 4, 16)
DEFAULT_REPEATS = 3
DECODE_WARMUP = 8  # tokens before timing decode; TorchScript (the official package) optimizes after a few calls
BATCH_WARMUP = 3  # batched steps before timing each batch size
PREFILL_WARMUP_TOKENS = 64  # prompt length of the two untimed prefill runs


# ----------------------------------------------------------------------------------------------- helpers


def _proc_status_bytes(key: str) -> int | None:
    """A size field of /proc/self/status (e.g. "VmHWM"), in bytes; None where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes.

    On Linux this is VmHWM from /proc/self/status: `getrusage().ru_maxrss` survives fork + exec, so a
    process started by a bigger one reports at least its parent's size at the fork. Elsewhere it is
    ru_maxrss (KiB on Linux, bytes on macOS).
    """
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int | None:
    """Resident set size now, or None where /proc is missing (the runtime's own reading, `heap.resident_bytes`)."""
    return heap.resident_bytes()


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none); above the core count, timings are unreliable."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def random_tokens(n: int, vocab_size: int, seed: int = 0) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (n,), generator=g).tolist()


def _gpu_in_use() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized()


def _sync_gpu() -> None:
    """Wait for the GPU's queued work: CUDA kernels run after their launch returns, so a timer stopped
    without this would miss the last steps' work (and the first timed run would pay for the warm-up's)."""
    if _gpu_in_use():
        sys.modules["torch"].cuda.synchronize()


def _timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    _sync_gpu()
    t0 = time.perf_counter()
    fn()
    _sync_gpu()
    return time.perf_counter() - t0


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return n


def parse_batches(text: str) -> list[int]:
    """'1,4,16' -> [1, 4, 16] (duplicates dropped, order kept)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give at least one batch size, e.g. 1,4,16")
    out: list[int] = []
    for p in parts:
        n = _positive_int(p)
        if n not in out:
            out.append(n)
    return out


def read_bandwidth_bytes_per_s(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """This machine's memory read bandwidth: the fastest of `repeats` sums over `nbytes` of floats on torch's
    threads. Decoding one stream reads every weight once per token, so this bounds its speed. Allocates
    `nbytes`: run it in a process whose peak RSS is not being measured."""
    import torch

    a = torch.ones(max(1, nbytes // 4))
    a.sum()
    return a.numel() * 4 / min(_timed(a.sum) for _ in range(repeats))


def machine_info() -> dict[str, Any]:
    """CPU model, core count, RAM and library versions, for reports."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    ram = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        rwkv_version = version("rwkv")
    except Exception:  # the official package is optional here
        rwkv_version = None
    from rwkv_hub import __version__

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_bytes": ram,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "rwkv": rwkv_version,
        "rwkv_hub": __version__,
        "python": platform.python_version(),
        **({"gpu": torch.cuda.get_device_name()} if _gpu_in_use() else {}),
    }


# ----------------------------------------------------------------------------------------------- measuring


def time_decode(step: Callable[[int], Any], warmup: list[int], tokens: list[int], repeats: int) -> list[float]:
    """Tokens/s of `step(token)` (one token per call, state kept by `step`), one figure per repeat.

    `warmup` tokens go through untimed first.
    """
    for t in warmup:
        step(t)

    def run() -> None:
        for t in tokens:
            step(t)

    return [len(tokens) / _timed(run) for _ in range(repeats)]


def time_prefill(prefill: Callable[[list[int]], Any], prompt: list[int], repeats: int) -> list[float]:
    """Tokens/s of `prefill(prompt)` from an empty state, one figure per repeat (after two short untimed runs)."""
    for _ in range(2):
        prefill(prompt[:PREFILL_WARMUP_TOKENS])
    return [len(prompt) / _timed(lambda: prefill(prompt)) for _ in range(repeats)]


def measure(
    model,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    decode_tokens: int = DEFAULT_DECODE_TOKENS,
    batches: Sequence[int] = DEFAULT_BATCHES,
    repeats: int = DEFAULT_REPEATS,
    seed: int = 0,
) -> dict[str, Any]:
    """Time an `rwkv_hub.Model`; returns tokens/s figures (medians and each run), weight bytes and peak RSS.

    Keys: decode_tok_s, prefill_tok_s, aggregate_tok_s ({"B": tok/s}), the same with `_runs` (every
    repeat), weight_bytes, peak_rss_bytes, and the settings used.
    """
    load_before = load_average()
    vocab = model.spec.vocab_size
    prompt = random_tokens(prompt_tokens, vocab, seed)
    stream = random_tokens(decode_tokens + DECODE_WARMUP, vocab, seed + 1)

    state = [model.new_state()]

    def step(tok: int) -> None:
        _, state[0] = model.forward(tok, state[0])

    decode = time_decode(step, stream[:DECODE_WARMUP], stream[DECODE_WARMUP:], repeats)

    prefill = time_prefill(lambda p: model.forward(p, None), prompt, repeats)
    single_peak = peak_rss_bytes()  # one stream: the weights plus what a prompt and a decode loop need

    aggregate: dict[str, list[float]] = {}
    for b in batches:
        aggregate[str(b)] = _time_batch(model, b, decode_tokens, repeats, seed + 10 + b)

    result = _result(decode, prefill, aggregate, model.weight_bytes, prompt_tokens, decode_tokens, repeats, load_before)
    result["peak_rss_single_bytes"] = single_peak
    return result


def _time_batch(model, batch: int, steps: int, repeats: int, seed: int) -> list[float]:
    """Aggregate tokens/s of `batch` sequences advanced together, one token each per forward_batch call."""
    vocab = model.spec.vocab_size
    toks = random_tokens((steps + BATCH_WARMUP) * batch, vocab, seed)
    rows = [[[t] for t in toks[i * batch : (i + 1) * batch]] for i in range(steps + BATCH_WARMUP)]
    st = [model.new_state(batch)]

    def one(r: list[list[int]]) -> None:
        _, st[0] = model.forward_batch(r, st[0])

    for r in rows[:BATCH_WARMUP]:
        one(r)

    def run() -> None:
        for r in rows[BATCH_WARMUP:]:
            one(r)

    return [batch * steps / _timed(run) for _ in range(repeats)]


def measure_official(
    model,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    decode_tokens: int = DEFAULT_DECODE_TOKENS,
    repeats: int = DEFAULT_REPEATS,
    seed: int = 0,
) -> dict[str, Any]:
    """Time BlinkDL's `rwkv.model.RWKV` (RWKV-7) exactly as `measure` times ours, with the same tokens.

    It has no batching, so its only "aggregate" figure is batch 1, which is its single-stream decode rate.
    Its `forward` mutates the state it is given; a one-token list takes its single-token path.
    """
    load_before = load_average()
    vocab = model.args.vocab_size
    prompt = random_tokens(prompt_tokens, vocab, seed)
    stream = random_tokens(decode_tokens + DECODE_WARMUP, vocab, seed + 1)

    state = [None]

    def step(tok: int) -> None:
        _, state[0] = model.forward([tok], state[0])

    decode = time_decode(step, stream[:DECODE_WARMUP], stream[DECODE_WARMUP:], repeats)
    prefill = time_prefill(lambda p: model.forward(list(p), None), prompt, repeats)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.z.values())
    return _result(
        decode, prefill, {"1": list(decode)}, weight_bytes, prompt_tokens, decode_tokens, repeats, load_before
    )


def _result(
    decode: list[float],
    prefill: list[float],
    aggregate: dict[str, list[float]],
    weight_bytes: int,
    prompt_tokens: int,
    decode_tokens: int,
    repeats: int,
    load_before: float | None,
) -> dict[str, Any]:
    import torch

    return {
        "decode_tok_s": _median(decode),
        "prefill_tok_s": _median(prefill),
        "aggregate_tok_s": {b: _median(v) for b, v in aggregate.items()},
        "decode_tok_s_runs": decode,
        "prefill_tok_s_runs": prefill,
        "aggregate_tok_s_runs": aggregate,
        "weight_bytes": int(weight_bytes),
        "peak_rss_bytes": peak_rss_bytes(),
        "prompt_tokens": prompt_tokens,
        "decode_tokens": decode_tokens,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "load_avg": [load_before, load_average()],  # 1-minute load average before and after measuring
        **({"peak_gpu_bytes": torch.cuda.max_memory_allocated()} if _gpu_in_use() else {}),
    }


def bench_official(
    path: str | os.PathLike,
    strategy: str,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    decode_tokens: int = DEFAULT_DECODE_TOKENS,
    repeats: int = DEFAULT_REPEATS,
) -> dict[str, Any]:
    """Load a .pth with the official package (RWKV-7 mode, TorchScript on) and measure it.

    Run it in a fresh process: the package reads RWKV_V7_ON / RWKV_JIT_ON when `rwkv.model` is first imported.
    """
    os.environ.setdefault("RWKV_V7_ON", "1")
    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    p = Path(path)
    if p.suffix != ".pth" or not p.is_file():
        raise FileNotFoundError(f"{p}: the official package needs an existing .pth file")
    from rwkv.model import RWKV

    rss_before = current_rss_bytes()
    t0 = time.perf_counter()
    model = RWKV(model=str(p.with_suffix("")), strategy=strategy)
    load_s = time.perf_counter() - t0
    load_peak = peak_rss_bytes()
    out = measure_official(model, prompt_tokens, decode_tokens, repeats)
    out.update(
        runtime="rwkv (official)",
        model=str(p),
        strategy=strategy,
        load_s=load_s,
        rss_before_load_bytes=rss_before,
        peak_rss_after_load_bytes=load_peak,
        n_layer=model.args.n_layer,
        n_embd=model.args.n_embd,
        vocab_size=model.args.vocab_size,
    )
    return out


# ----------------------------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `rwkv-hub bench`."""
    parser.add_argument(
        "--model", help="an RWKV-7, -6, -5 or -4 checkpoint (.pth or .safetensors); default: the demo model"
    )
    parser.add_argument("--strategy", default="cpu bf16", help='for example "cpu fp32", "cpu bf16", "cpu bf16i8"')
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--prompt-tokens", type=_positive_int, default=DEFAULT_PROMPT_TOKENS, help="prefill prompt length"
    )
    parser.add_argument(
        "--decode-tokens", type=_positive_int, default=DEFAULT_DECODE_TOKENS, help="tokens (steps) per timed decode run"
    )
    parser.add_argument(
        "--batch",
        type=parse_batches,
        default=list(DEFAULT_BATCHES),
        help="comma-separated batch sizes for aggregate decode (default 1,4,16)",
    )
    parser.add_argument("--repeats", type=_positive_int, default=DEFAULT_REPEATS, help="timed runs per figure")


def run(args: argparse.Namespace) -> int:
    """`rwkv-hub bench`: load, measure, print. Bad input raises RWKVHubError (the CLI prints it, exit 2)."""
    import rwkv_hub

    rss_before = current_rss_bytes()
    t0 = time.perf_counter()
    model = rwkv_hub.load(args.model, args.strategy)
    load_s = time.perf_counter() - t0
    load_peak = peak_rss_bytes()
    result = measure(model, args.prompt_tokens, args.decode_tokens, args.batch, args.repeats)
    spec = model.spec
    report = {
        "runtime": "rwkv-hub",
        "model": str(model.path),
        "strategy": model.strategy.name,
        "load_s": load_s,
        "rss_before_load_bytes": rss_before,
        "peak_rss_after_load_bytes": load_peak,
        "n_layer": spec.n_layer,
        "n_embd": spec.n_embd,
        "vocab_size": spec.vocab_size,
        "sparse_ffn_layers": len(model.sparse_ffn_layers),
        **result,
        "machine": machine_info(),
    }
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _peak_text(r: dict[str, Any]) -> str:
    text = _mib(r["peak_rss_bytes"])
    if r.get("rss_before_load_bytes") and r.get("peak_rss_after_load_bytes"):
        text += (
            f" (before loading {_mib(r['rss_before_load_bytes'])}, peak after loading "
            f"{_mib(r['peak_rss_after_load_bytes'])})"
        )
    return text


def format_report(r: dict[str, Any]) -> str:
    """The human-readable table of `rwkv-hub bench`."""
    m = r.get("machine", {})
    machine = f"{m.get('cpu', '?')}, {m.get('torch_threads', '?')} torch threads, torch {m.get('torch', '?')}"
    if m.get("gpu"):
        machine += f", GPU {m['gpu']}"

    def runs(xs: Sequence[float]) -> str:
        return "runs " + " ".join(f"{x:.1f}" for x in xs)

    rows: list[tuple[str, str, str]] = [
        ("model", f"{r['model']} ({r['n_layer']} x {r['n_embd']}, vocab {r['vocab_size']})", ""),
        ("strategy", r["strategy"], ""),
        ("machine", machine, ""),
        ("sparse feed-forward layers", f"{r['sparse_ffn_layers']} of {r['n_layer']}", ""),
        ("load time", f"{r['load_s']:.2f} s", ""),
        ("weights", _mib(r["weight_bytes"]), ""),
        ("peak RSS", _peak_text(r), ""),
        *([("peak GPU memory", _mib(r["peak_gpu_bytes"]), "")] if "peak_gpu_bytes" in r else []),
        ("decode, 1 sequence", f"{r['decode_tok_s']:.1f} tok/s", runs(r["decode_tok_s_runs"])),
        (f"prefill, {r['prompt_tokens']} tokens", f"{r['prefill_tok_s']:.1f} tok/s", runs(r["prefill_tok_s_runs"])),
    ]
    for b, v in r["aggregate_tok_s"].items():
        rows.append((f"decode, batch {b} (total)", f"{v:.1f} tok/s", runs(r["aggregate_tok_s_runs"][b])))
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, c in rows if c)
    lines = [f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() if c else f"{a:<{w0}}  {b}" for a, b, c in rows]
    lines.append(f"(medians of {r['repeats']} runs; decode runs are {r['decode_tokens']} tokens each)")
    before, after = r.get("load_avg") or (None, None)
    cores = os.cpu_count() or 1
    if max(before or 0, after or 0) > cores:
        lines.append(
            f"warning: load average {before} -> {after} on {cores} cores; other processes skewed these timings"
        )
    return "\n".join(lines)


def write_results_section(path: Path, name: str, text: str) -> None:
    """Replace the `<!-- bench:NAME -->` section of a results file, or append it; the rest stays as it was.

    Written to a temporary file and renamed, so an interrupted run never leaves a half-written file.
    """
    old = path.read_text() if path.exists() else ""
    pattern = rf"<!-- bench:{re.escape(name)} -->\n.*?<!-- /bench:{re.escape(name)} -->"
    if re.search(pattern, old, flags=re.S):
        new = re.sub(pattern, lambda _: text, old, flags=re.S)
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text + "\n"
    write_text(path, new)
