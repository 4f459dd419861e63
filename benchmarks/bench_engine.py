"""Benchmark the engine: concurrent streams, chat turns with sessions, and fairness under a long prompt.

    python benchmarks/bench_engine.py [--shape 0.19b] [--strategy "cpu bf16"] [--tokens 64] [--quick]

On a random-weight checkpoint of a released shape (written once into bench-out/):
1. aggregate tokens/s and p50/p99 inter-token latency at 1, 2, 4, 8, 16, 32 concurrent streams, next to
   the official package's single-stream decode rate on the same file in the same run;
2. time to first token at turns 1 and 20 of a conversation with ~100-token turns: through a session
   (each turn feeds only its new tokens) and without (the whole history is sent each turn, no cache);
3. p99 inter-token latency of 8 running streams, alone and while a 4,000-token prompt arrives.
Results go to the "Engine" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RWKV_V7_ON", "1")
os.environ.setdefault("RWKV_JIT_ON", "1")

import rwkv_hub  # noqa: E402
from rwkv_hub.bench import machine_info, measure_official, random_tokens, write_results_section  # noqa: E402
from rwkv_hub.core.engine import Engine, EngineLimits  # noqa: E402
from rwkv_hub.core.sampling import SamplingParams  # noqa: E402
from rwkv_hub.core.sessions import SessionStore  # noqa: E402
from rwkv_hub.core.synth import write_random_checkpoint  # noqa: E402

SHAPES = {"0.19b": (12, 768, 65536), "tiny": (2, 128, 256)}
STREAMS = (1, 2, 4, 8, 16, 32)


def checkpoint(shape: str) -> Path:
    n_layer, n_embd, vocab = SHAPES[shape]
    path = ROOT / "bench-out" / f"rwkv7-random-{shape}-L{n_layer}-D{n_embd}-V{vocab}.pth"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        write_random_checkpoint(path, n_layer=n_layer, n_embd=n_embd, vocab_size=vocab)
    return path


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def gaps(times: list[float], start: float = 0.0) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False) if a >= start]


def with_engine(model, body, **engine_args):
    """Run `body(engine)` (a coroutine function) on an event loop in a helper thread while this thread, the
    one that loaded the model, runs the engine, as `rwkv-hub serve` does."""
    engine = Engine(model, **engine_args)
    engine.start(thread=False)
    out: dict = {}

    def client() -> None:
        try:
            out["value"] = asyncio.run(body(engine))
        except BaseException as e:  # handed to the main thread below
            out["error"] = e
        finally:
            engine.request_stop()

    t = threading.Thread(target=client)
    t.start()
    engine.run()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def concurrent(model, n: int, tokens: int) -> dict:
    return with_engine(
        model, lambda e: _concurrent(e, n, tokens), limits=EngineLimits(max_active=n, max_new_tokens=tokens)
    )


async def _concurrent(engine, n: int, tokens: int) -> dict:
    model = engine.model
    prompts = [random_tokens(16, model.spec.vocab_size, seed=s) for s in range(n)]
    t0 = time.perf_counter()
    # Sampled the way a chat is (the default parameters), with a fixed seed per stream.
    streams = [engine.submit(p, SamplingParams(seed=i, max_tokens=tokens)) for i, p in enumerate(prompts)]
    await asyncio.gather(*(s.text() for s in streams))
    wall = time.perf_counter() - t0
    total = sum(s.result.completion_tokens for s in streams)
    itl = [g for s in streams for g in gaps(s.stats.token_times)]
    return {"streams": n, "tok_s": total / wall, "itl_p50_ms": 1e3 * pct(itl, 0.5), "itl_p99_ms": 1e3 * pct(itl, 0.99)}


def chat(model, turns: int, per_turn: int, with_sessions: bool) -> list[float]:
    """Time to first token of each turn."""
    store = SessionStore(model.state_shape)
    store.create("c")
    limits = EngineLimits(max_prompt_tokens=65536)
    return with_engine(model, lambda e: _chat(e, turns, per_turn, with_sessions), limits=limits, sessions=store)


async def _chat(engine, turns: int, per_turn: int, with_sessions: bool) -> list[float]:
    model = engine.model
    out = []
    history: list[int] = []
    for t in range(turns):
        new = random_tokens(per_turn, model.spec.vocab_size, seed=100 + t)
        params = SamplingParams(seed=t, max_tokens=8)
        if with_sessions:
            stream = engine.submit(new, params, session="c")
        else:
            stream = engine.submit(history + new, params)
        await stream.text()
        history += new + stream.result.tokens
        out.append(stream.stats.first_token_s)
    return out


def fairness(model, long_tokens: int) -> dict:
    return with_engine(model, lambda e: _fairness(e, long_tokens), limits=EngineLimits(max_new_tokens=4096))


async def _fairness(engine, long_tokens: int) -> dict:
    model = engine.model
    runs = [
        engine.submit(random_tokens(8, model.spec.vocab_size, s), SamplingParams(seed=s, max_tokens=4096))
        for s in range(8)
    ]
    for s in runs:
        await s.__anext__()
    await asyncio.sleep(3.0)
    t_long = time.perf_counter()
    long = engine.submit(random_tokens(long_tokens, model.spec.vocab_size, 99), SamplingParams(max_tokens=1))
    await long.text()
    t_done = time.perf_counter()
    await asyncio.sleep(0.5)
    for s in runs:
        s.cancel()
    for s in runs:
        await s.text()
    before = [g for s in runs for g in gaps([t for t in s.stats.token_times if t < t_long])]
    during = [
        b - a
        for s in runs
        for a, b in zip(s.stats.token_times, s.stats.token_times[1:], strict=False)
        if t_long <= a and b <= t_done
    ]
    return {
        "itl_p99_alone_ms": 1e3 * pct(before, 0.99),
        "itl_p99_during_ms": 1e3 * pct(during, 0.99),
        "itl_p50_alone_ms": 1e3 * pct(before, 0.5),
        "itl_p50_during_ms": 1e3 * pct(during, 0.5),
        "long_prompt_s": t_done - t_long,
    }


def official_rate(path: Path, tokens: int) -> float:
    from rwkv.model import RWKV

    ref = RWKV(model=str(path.with_suffix("")), strategy="cpu bf16")
    return measure_official(ref, prompt_tokens=16, decode_tokens=tokens, repeats=3)["decode_tok_s"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="0.19b", choices=list(SHAPES))
    ap.add_argument("--strategy", default="cpu bf16")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per stream in the concurrency runs")
    ap.add_argument("--quick", action="store_true", help="the tiny shape and short runs; results not written")
    a = ap.parse_args()
    shape = "tiny" if a.quick else a.shape
    path = checkpoint(shape)
    model = rwkv_hub.load(path, a.strategy)
    official = official_rate(path, a.tokens)
    print(f"official {a.strategy} single stream: {official:.1f} tok/s", flush=True)
    rows = []
    for n in STREAMS:
        r = concurrent(model, n, a.tokens)
        rows.append(r)
        print(r, flush=True)
    turns = 5 if a.quick else 20
    with_s = chat(model, turns, 100, True)
    without = chat(model, turns, 100, False)
    print("ttft with sessions", with_s[0], with_s[-1], "without", without[0], without[-1], flush=True)
    fair = fairness(model, 500 if a.quick else 4000)
    print(fair, flush=True)
    if a.quick:
        return 0
    single = rows[0]["tok_s"]
    m = machine_info()
    lines = [
        "<!-- bench:engine -->",
        f"## Engine ({shape}, `{a.strategy}`)",
        "",
        f"`python benchmarks/bench_engine.py`, {datetime.date.today().isoformat()}, {m['cpu']}, {m['cores']} cores,"
        f" torch {m['torch']}. Random weights, {a.tokens} sampled tokens per stream (chat defaults, seeded).",
        f"Official `rwkv` {m['rwkv']} at `{a.strategy}`, one stream, same file, same run: **{official:.1f} tok/s**.",
        "",
        "| streams | aggregate tok/s | vs official single | vs our single | inter-token p50 | p99 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['streams']} | {r['tok_s']:.1f} | {r['tok_s'] / official:.2f}x | {r['tok_s'] / single:.2f}x |"
            f" {r['itl_p50_ms']:.0f} ms | {r['itl_p99_ms']:.0f} ms |"
        )
    lines += [
        "",
        f"Chat, {turns} turns of 100 new tokens (+8 generated): time to first token",
        "",
        "| | turn 1 | turn 20 | ratio |",
        "|---|---|---|---|",
        f"| session (only new tokens fed) | {1e3 * with_s[0]:.0f} ms | {1e3 * with_s[-1]:.0f} ms |"
        f" {with_s[-1] / with_s[0]:.2f}x |",
        f"| whole history each turn, no cache | {1e3 * without[0]:.0f} ms | {1e3 * without[-1]:.0f} ms |"
        f" {without[-1] / without[0]:.2f}x |",
        "",
        "8 streams decoding while a 4,000-token prompt arrives:",
        "",
        "| | inter-token p50 | p99 |",
        "|---|---|---|",
        f"| alone | {fair['itl_p50_alone_ms']:.0f} ms | {fair['itl_p99_alone_ms']:.0f} ms |",
        f"| during the long prompt ({fair['long_prompt_s']:.1f} s to its first token)"
        f" | {fair['itl_p50_during_ms']:.0f} ms | {fair['itl_p99_during_ms']:.0f} ms"
        f" ({fair['itl_p99_during_ms'] / fair['itl_p99_alone_ms']:.2f}x) |",
        "<!-- /bench:engine -->",
    ]
    write_results_section(ROOT / "benchmarks" / "RESULTS.md", "engine", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
