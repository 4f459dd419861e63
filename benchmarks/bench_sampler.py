"""Cost of one sampling step with every option on, against one batched decode step of a 0.19B model.

Samples B = 1 and B = 16 sequences over a 65536-token vocabulary (temperature, top_p, top_k, presence and
frequency penalties with a few hundred tokens of history, penalty decay, logit bias, banned and stop tokens,
seeds), times one `forward_batch` decode step of the random 0.19B checkpoint for the same B in the same run,
and writes the `<!-- bench:sampler -->` section of benchmarks/RESULTS.md, leaving the other sections alone.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import rwkv_hub
from rwkv_hub.bench import machine_info, write_results_section
from rwkv_hub.core.sampling import Sampler, SamplingParams
from rwkv_hub.core.state import State
from rwkv_hub.core.synth import write_random_checkpoint

RESULTS = Path(__file__).with_name("RESULTS.md")
NAME = "sampler"
VOCAB = 65536
CHECKPOINT = Path("bench-out/rwkv7-random-0.19b-L12-D768-V65536.pth")
PARAMS = dict(
    temperature=1.2,
    top_p=0.5,
    top_k=100,
    presence_penalty=0.4,
    frequency_penalty=0.4,
    penalty_decay=0.996,
    logit_bias={11: 1.5, 261: -2.0},
    banned_tokens=(0, 1, 2),
    stop_tokens=(3,),
)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def peaked_logits(batch: int, seed: int = 0) -> torch.Tensor:
    """Rows shaped like a trained model's: log-probabilities falling as -1.1 log(rank), ids shuffled."""
    g = torch.Generator().manual_seed(seed)
    base = -3.3 * torch.log(torch.arange(1, VOCAB + 1, dtype=torch.float32))
    return torch.stack(
        [base[torch.randperm(VOCAB, generator=g)] + torch.randn(VOCAB, generator=g) for _ in range(batch)]
    )


def sampler_ms(logits: torch.Tensor, history: int, repeats: int) -> float:
    batch = logits.shape[0]
    sampler = Sampler(VOCAB, [SamplingParams(**PARAMS, seed=b) for b in range(batch)])
    for _ in range(history):
        sampler.sample(logits)
    return median_ms(lambda: sampler.sample(logits), repeats)


def decode_ms(model: rwkv_hub.Model, batch: int, repeats: int) -> tuple[float, torch.Tensor]:
    state = State.stack([model.new_state() for _ in range(batch)])
    tokens = [[(b * 7919) % VOCAB] for b in range(batch)]
    logits, state = model.forward_batch(tokens, state)
    ms = median_ms(lambda: model.forward_batch(tokens, state), repeats)
    return ms, logits


def section(rows: list[tuple[int, float, float, float]], strategy: str, cmd: str) -> str:
    m = machine_info()
    lines = [
        f"<!-- bench:{NAME} -->",
        f"## Sampler: one step over a {VOCAB}-token vocabulary, every option on, vs one 0.19B decode step",
        "",
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {m['cpu']}, {m['cores']} cores; rwkv {m['rwkv']}, rwkv-hub {m['rwkv_hub']}, Python {m['python']}",
        f"- command: `{cmd}`",
        f"- options: {', '.join(f'{k}={v}' for k, v in PARAMS.items())}, a seed per sequence; 200 steps of history",
        f"- decode: `forward_batch` of one token per sequence, random 0.19B checkpoint at `{strategy}`; medians",
        "- peaked: logits shaped like a trained model's; model: the random checkpoint's own, nearly flat, logits",
        "  (nearly every token is within 9 nats of the top one, so the whole vocabulary is sorted: the worst case)",
        "",
        "| batch | decode step ms | sampler ms, peaked | share | sampler ms, random model's logits | share |",
        "|---|---|---|---|---|---|",
    ]
    for b, dec, peak, flat in rows:
        lines.append(f"| {b} | {dec:.1f} | {peak:.2f} | {peak / dec:.1%} | {flat:.2f} | {flat / dec:.1%} |")
    b, dec, peak, _ = rows[-1]
    met = "MET" if peak < 0.1 * dec else "NOT MET"
    lines += ["", f"- **{met}**: sampling B={b} with every option on < 10% of a decode step: {peak / dec:.1%}"]
    lines.append(f"<!-- /bench:{NAME} -->")
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    write_results_section(path, NAME, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategy", default="cpu bf16")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--output", type=Path, default=RESULTS, help="results file; '-' to only print")
    args = p.parse_args(argv)
    if not CHECKPOINT.exists():
        write_random_checkpoint(CHECKPOINT, n_layer=12, n_embd=768, vocab_size=VOCAB)
    model = rwkv_hub.load(CHECKPOINT, strategy=args.strategy)
    rows = []
    for batch in (1, 16):
        dec, model_logits = decode_ms(model, batch, max(5, args.repeats // 5))
        peak = sampler_ms(peaked_logits(batch), 200, args.repeats)
        flat = sampler_ms(model_logits, 200, max(5, args.repeats // 5))
        rows.append((batch, dec, peak, flat))
        print(f"B={batch}: decode {dec:.1f} ms, sampler {peak:.2f} ms peaked ({peak / dec:.1%}), {flat:.2f} ms flat")
    cmd = shlex.join(["python", "benchmarks/bench_sampler.py", *(sys.argv[1:] if argv is None else argv)])
    if str(args.output) != "-":
        write_section(args.output, section(rows, args.strategy, cmd))
        print(f"wrote the {NAME} section of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
