"""Train the built-in demo model: `python -m rwkv_hub.training --out rwkv_hub/models/rwkv7-stdlib-demo.pth`.

Fixed seed, fixed step count, CPU by default (CUDA when asked for and present). The defaults are the
shipped model's recipe and take about 45 minutes on a 2-core machine; `--steps 3 --layers 1 --width 64`
is the smoke test CI runs. The result is an official x070 checkpoint (bf16) with a `bytes` tokenizer
sidecar and a JSON record of how it was made.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.atomic import replace_file, write_text
from . import corpus
from .network import Network, init_state_dict

VOCAB = 256  # bytes


@dataclass
class Recipe:
    n_layer: int = 4
    n_embd: int = 256
    head_size: int = 64
    ctx: int = 512
    batch: int = 16
    steps: int = 1600
    lr: float = 2e-3
    lr_final: float = 1e-4
    warmup: int = 50
    weight_decay: float = 0.01
    seed: int = 20261125
    bf16: bool = True  # matrix products in bf16 (autocast), weights and optimizer state fp32


def lr_at(step: int, r: Recipe) -> float:
    """Linear warm-up, then cosine decay to lr_final."""
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    progress = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.lr_final + 0.5 * (r.lr - r.lr_final) * (1 + math.cos(math.pi * progress))


def train(r: Recipe, out: Path, device: str = "cpu", log=print) -> dict:
    """Train and write `out` (.pth), `out.with_suffix('.tokenizer')` and `out.with_suffix('.json')`."""
    torch.manual_seed(r.seed)
    t_start = time.time()
    data, counts = corpus.build(seed=r.seed)
    log(f"corpus: {len(data):,} bytes {counts} ({time.time() - t_start:.1f} s)")
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    net = Network(init_state_dict(r.n_layer, r.n_embd, VOCAB, r.head_size, r.seed), r.head_size).to(device)
    decay, no_decay = [], []
    for name, p in net.weights.items():
        (decay if p.dim() == 2 and ("weight" in name or name.endswith(("1", "2"))) else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": r.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=r.lr,
        betas=(0.9, 0.99),
        eps=1e-8,
    )
    gen = torch.Generator().manual_seed(r.seed)
    span = torch.arange(r.ctx + 1)
    losses: list[float] = []
    t_train = time.time()
    for step in range(r.steps):
        starts = torch.randint(0, len(tokens) - r.ctx - 1, (r.batch,), generator=gen)
        window = tokens[starts[:, None] + span].long().to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, r)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=r.bf16):
            logits = net(window[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(loss.item() / math.log(2))
        if step % 50 == 0 or step == r.steps - 1:
            recent = losses[-50:]
            rate = (step + 1) * r.batch * r.ctx / (time.time() - t_train)
            log(f"step {step}: {sum(recent) / len(recent):.3f} bits/byte, {rate:,.0f} bytes/s, lr {lr_at(step, r):.2e}")
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_file(out, lambda tmp: torch.save(net.export(torch.bfloat16), tmp))
    out.with_suffix(".tokenizer").write_text("bytes\n")
    record = {
        "recipe": dataclasses.asdict(r),
        "corpus_bytes": counts,
        "held_out": list(corpus.HELD_OUT),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "train_seconds": round(time.time() - t_start, 1),
        "final_train_bits_per_byte": round(sum(losses[-50:]) / len(losses[-50:]), 4),
    }
    write_text(out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    log(f"wrote {out} ({out.stat().st_size:,} bytes) in {record['train_seconds']} s")
    return record


def main(argv: list[str] | None = None) -> int:
    d = Recipe()
    ap = argparse.ArgumentParser(prog="python -m rwkv_hub.training", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("rwkv_hub/models/rwkv7-stdlib-demo.pth"))
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--layers", type=int, default=d.n_layer)
    ap.add_argument("--width", type=int, default=d.n_embd)
    ap.add_argument("--ctx", type=int, default=d.ctx)
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if a.width % d.head_size or a.steps < 1 or a.layers < 1 or a.ctx < 2 or a.batch < 1:
        print(f"error: width must be a multiple of {d.head_size}; steps, layers, batch >= 1, ctx >= 2", file=sys.stderr)
        return 2
    r = dataclasses.replace(d, steps=a.steps, n_layer=a.layers, n_embd=a.width, ctx=a.ctx, batch=a.batch)
    train(r, a.out, a.device, log=lambda s: print(s, flush=True))
    return 0
