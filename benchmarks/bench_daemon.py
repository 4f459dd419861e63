"""Load test of the daemon on loopback, and the WebSocket path's per-token overhead over the engine alone.

    python benchmarks/bench_daemon.py [--seconds 120] [--ws 32] [--http 8] [--model PATH] [--strategy S]

`rwkv-hub serve` runs in a process of its own (the built-in demo model unless `--model` is given). For
`--seconds`, `--ws` WebSocket clients and `--http` OpenAI-API clients (the official `openai` package,
streaming) each send request after request. Every request must end with a done event or a clear error,
exactly once; the script counts lost and duplicated ends and fails if there are any. It reports
requests/s, tokens/s, p50/p99 time to first token, and the daemon's RSS after start-up and after each
quarter of the run (memory should level off). Before that, with a daemon in this process, it measures
the per-token overhead: the median gap between tokens seen by a WebSocket client minus the same gap
straight from the engine, for one stream. Results go to the "Daemon" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402
import websockets  # noqa: E402

from rwkv_hub.adapters.daemon import build_hub, start  # noqa: E402
from rwkv_hub.bench import machine_info, write_results_section  # noqa: E402
from rwkv_hub.core.sampling import SamplingParams  # noqa: E402
from rwkv_hub.hub.config import Config  # noqa: E402

TOKEN = "bench-token"
MAX_TOKENS = 32


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


class Tally:
    def __init__(self):
        self.sent = 0
        self.ids = itertools.count()  # request ids unique over the whole run
        self.ends: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.tokens = 0
        self.ttft: list[float] = []

    def end(self, rid: str) -> None:
        self.ends[rid] = self.ends.get(rid, 0) + 1


async def ws_worker(url: str, n: int, stop_at: float, tally: Tally) -> None:
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        i = 0
        while time.perf_counter() < stop_at:
            rid = f"w{n}-{next(tally.ids)}"
            i += 1
            t0 = time.perf_counter()
            first = None
            tally.sent += 1
            msg = {"type": "chat", "id": rid, "message": f"question {i}", "params": {"max_tokens": MAX_TOKENS}}
            await ws.send(json.dumps(msg))
            while True:
                ev = json.loads(await ws.recv())
                if ev["type"] == "delta" and first is None:
                    first = time.perf_counter() - t0
                if ev["type"] in ("done", "error"):
                    tally.end(ev["id"])
                    if ev["type"] == "done":
                        tally.tokens += ev["usage"]["completion_tokens"]
                        if first is not None:
                            tally.ttft.append(first)
                    else:
                        tally.errors[ev["code"]] = tally.errors.get(ev["code"], 0) + 1
                    break


def http_worker(url: str, n: int, stop_at: float, tally: Tally, lock: threading.Lock) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key=TOKEN, max_retries=0, timeout=120)
    i = 0
    while time.perf_counter() < stop_at:
        rid = f"h{n}-{next(tally.ids)}"
        i += 1
        with lock:
            tally.sent += 1
        t0 = time.perf_counter()
        first, count = None, 0
        try:
            for chunk in client.chat.completions.create(
                model="x", messages=[{"role": "user", "content": f"q {i}"}], max_tokens=MAX_TOKENS, stream=True
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    count += 1
                    if first is None:
                        first = time.perf_counter() - t0
            with lock:
                tally.end(rid)
                tally.tokens += count  # text chunks: a lower bound on tokens
                if first is not None:
                    tally.ttft.append(first)
        except openai.APIError as e:
            with lock:
                tally.end(rid)
                tally.errors[type(e).__name__] = tally.errors.get(type(e).__name__, 0) + 1


async def overhead(url: str, engine, rounds: int = 3) -> dict:
    """Median inter-token gap of one stream through the WebSocket and straight from the daemon's engine,
    alternating `rounds` times (so warm-up and drift fall on both sides), medians of per-round medians."""
    n = 200
    engine_gaps, ws_gaps = [], []
    for _ in range(rounds):
        s = engine.submit("def main():\n", SamplingParams(temperature=0, max_tokens=n))
        await s.text()
        times = s.stats.token_times
        engine_gaps.append(statistics.median(b - a for a, b in zip(times, times[1:], strict=False)))
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            msg = {
                "type": "generate",
                "id": "o",
                "prompt": "def main():\n",
                "params": {"max_tokens": n, "temperature": 0},
            }
            await ws.send(json.dumps(msg))
            stamps = []
            while True:
                ev = json.loads(await ws.recv())
                if ev["type"] == "delta":
                    stamps.append(time.perf_counter())
                elif ev["type"] in ("done", "error"):
                    break
        ws_gaps.append(statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False)))
    e, w = statistics.median(engine_gaps), statistics.median(ws_gaps)
    return {"engine_gap_ms": 1e3 * e, "ws_gap_ms": 1e3 * w, "overhead_ms": 1e3 * (w - e)}


def overhead_in_process(a) -> dict:
    """The per-token overhead, with a daemon in this process (engine in the main thread, as `serve`)."""
    config = Config(model=a.model, strategy=a.strategy, port=0)
    config.session_folder = str(ROOT / "bench-out" / "daemon-sessions")
    hub = build_hub(config)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    running = asyncio.run_coroutine_threadsafe(start(config, TOKEN, hub, engine_thread=False), loop).result(120)
    out: dict = {}

    def measure() -> None:
        try:
            out.update(asyncio.run(overhead(running.url.replace("http", "ws", 1) + "/ws", hub.engine)))
        finally:
            asyncio.run_coroutine_threadsafe(running.stop(), loop).result(60)

    worker = threading.Thread(target=measure)
    worker.start()
    hub.engine.run()
    worker.join()
    out["model"] = Path(hub.engine.model.path).name
    return out


def spawn_daemon(a) -> tuple[subprocess.Popen, str]:
    """`rwkv-hub serve` in a process of its own, as users run it; returns it and its URL."""
    home = ROOT / "bench-out" / "daemon-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "rwkv-hub").mkdir(exist_ok=True)
    (home / "rwkv-hub" / "config.toml").write_text(
        f"[limits]\nmax_active = {a.ws + a.http}\nmax_queue = 64\nmax_requests_per_connection = 4\n"
    )
    env = {**os.environ, "XDG_CONFIG_HOME": str(home), "RWKV_HUB_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "rwkv_hub", "serve", "--port", "0", "--strategy", a.strategy]
    cmd += ["--model", a.model] if a.model else []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()
    if " on http" not in line:
        proc.kill()
        raise SystemExit(f"the daemon did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[-1].strip()


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmRSS:"))


def load(url: str, a, pid: int, phases: int = 4) -> dict:
    """The clients, in phases; the daemon's RSS after each phase shows whether its memory grows."""
    ws_url = url.replace("http", "ws", 1) + "/ws"
    tally, lock = Tally(), threading.Lock()
    rss = [rss_of(pid)]
    t0 = time.perf_counter()
    for phase in range(phases):
        stop_at = t0 + a.seconds * (phase + 1) / phases
        threads = [threading.Thread(target=http_worker, args=(url, i, stop_at, tally, lock)) for i in range(a.http)]
        for t in threads:
            t.start()

        async def ws_all(stop_at=stop_at):
            await asyncio.gather(*(ws_worker(ws_url, i, stop_at, tally) for i in range(a.ws)))

        asyncio.run(ws_all())
        for t in threads:
            t.join()
        rss.append(rss_of(pid))
    return {"tally": tally, "wall": time.perf_counter() - t0, "rss": rss}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--ws", type=int, default=32)
    ap.add_argument("--http", type=int, default=8)
    ap.add_argument("--model")
    ap.add_argument("--strategy", default="cpu bf16")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    a = ap.parse_args()
    over = overhead_in_process(a)
    print("per-token gap", over, flush=True)
    proc, url = spawn_daemon(a)
    try:
        result = load(url, a, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    tally, wall, rss = result["tally"], result["wall"], result["rss"]
    lost = tally.sent - len(tally.ends)
    dup = sum(1 for v in tally.ends.values() if v > 1)
    r = {
        "requests": tally.sent,
        "requests_s": len(tally.ends) / wall,
        "tokens_s": tally.tokens / wall,
        "ttft_p50_ms": 1e3 * pct(tally.ttft, 0.5),
        "ttft_p99_ms": 1e3 * pct(tally.ttft, 0.99),
        "errors": tally.errors,
        "lost": lost,
        "duplicated": dup,
        "daemon_rss_mib": [round(x / 2**20) for x in rss],
    } | over
    print(r, flush=True)
    m = machine_info()
    name = over["model"]
    text = "\n".join(
        [
            "<!-- bench:daemon -->",
            f"## Daemon load test ({name}, `{a.strategy}`)",
            "",
            f"`python benchmarks/bench_daemon.py`, {datetime.date.today().isoformat()}, {m['cpu']}, {m['cores']} cores."
            f" {a.ws} WebSocket clients and {a.http} OpenAI-API clients (streaming), each sending chat requests of"
            f" {MAX_TOKENS} tokens back to back for {a.seconds:.0f} s on loopback, against `rwkv-hub serve` in its own"
            " process (its RSS is read from /proc after start-up and after each quarter of the run).",
            "",
            "| requests | req/s | tokens/s | first token p50 / p99 | errors | lost | dup. | daemon RSS per quarter |",
            "|---|---|---|---|---|---|---|---|",
            f"| {r['requests']} | {r['requests_s']:.1f} | {r['tokens_s']:.0f} |"
            f" {r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} ms |"
            f" {r['errors'] or 'none'} | {lost} | {dup} | {' / '.join(map(str, r['daemon_rss_mib']))} MiB |",
            "",
            "Per-token overhead of the WebSocket path, one stream, greedy, 200 tokens: median gap"
            f" {over['ws_gap_ms']:.2f} ms"
            f" through the WebSocket against {over['engine_gap_ms']:.2f} ms inside the engine:"
            f" **{over['overhead_ms']:.2f} ms** (target under 1 ms).",
            "<!-- /bench:daemon -->",
        ]
    )
    if not a.no_write:
        write_results_section(ROOT / "benchmarks" / "RESULTS.md", "daemon", text)
    print(text)
    return 1 if lost or dup else 0


if __name__ == "__main__":
    raise SystemExit(main())
