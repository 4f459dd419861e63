"""The RWKV guide's memory table, measured: peak RSS and decode speed per model size and strategy.

    python benchmarks/bench_memory.py [--sizes 1b5,2b9,7b2,13b3] [--strategies "cpu fp32,cpu bf16,cpu bf16i8"]

For each size the guide lists (1B6, 3B, 7B, 14B), a random-weight RWKV-7 (or, with --generations
x060, RWKV-6) checkpoint of the nearest released shape is written once into bench-out/ (as safetensors,
streamed a layer at a time, so even the 13B file is made in a few GB of memory). Each (size, strategy)
is measured in a fresh process: peak RSS after loading and decoding, and single-sequence decode
tokens/s. A combination whose weights cannot fit in this machine's memory is not run and says so, as
the guide does. The official package
runs too where it fits (it holds about twice the fp32 weights while loading). The table goes to
docs/memory.md, next to the guide's figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (layers, width, the guide's size label); RWKV-7 G1 shapes nearest the guide's rows.
SIZES = {
    "1b5": (24, 2048, "1B6"),
    "2b9": (32, 2560, "3B"),
    "7b2": (32, 4096, "7B"),
    "13b3": (61, 4096, "14B"),
}
VOCAB = 65536
# The guide's figures, GB: CPU fp32, CUDA fp16, CUDA int8, rwkv.cpp Q5_1 (blank where it gives none).
GUIDE = {
    "1B6": (6.6, 3.2, 1.9, 2.0),
    "3B": (12.0, 6.2, 3.4, 3.7),
    "7B": (21.0, 14.3, 7.7, 7.2),
    "14B": (None, 28.5, 15.0, 12.4),
}
DECODE_TOKENS = 16
HEADROOM = 0.92  # of the memory available, what a run may plan to use

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch
from rwkv_hub.bench import peak_rss_bytes
path, strategy, n, official, generation = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
t0 = time.perf_counter()
if official:
    import os
    if generation == "x070":
        os.environ["RWKV_V7_ON"] = "1"
    os.environ["RWKV_JIT_ON"] = "1"
    from rwkv.model import RWKV
    model = RWKV(path.removesuffix(".pth"), strategy=strategy)
    step = lambda tok, state: model.forward([tok], state)
else:
    import rwkv_hub
    model = rwkv_hub.load(path, strategy)
    step = lambda tok, state: model.forward([tok], state)
load_s = time.perf_counter() - t0
with torch.inference_mode():
    logits, state = step(0, None)
    for t in range(2):
        logits, state = step(int(logits.argmax()), state)
    t0 = time.perf_counter()
    for t in range(n):
        logits, state = step(int(logits.argmax()), state)
    dt = time.perf_counter() - t0
from rwkv_hub.core.linear import cpu_int8_kernel
kernel = cpu_int8_kernel() if "i8" in strategy and not official else None
print(json.dumps({{"peak_rss": peak_rss_bytes(), "tok_s": n / dt, "load_s": load_s, "int8_kernel": kernel}}))
"""


def checkpoint(size: str, generation: str = "x070") -> Path:
    """The random checkpoint for a size, written once (bf16 safetensors, a layer at a time)."""
    n_layer, n_embd, _ = SIZES[size]
    path = ROOT / "bench-out" / f"{generation}-random-{size}-L{n_layer}-D{n_embd}.safetensors"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        write_streamed(path, n_layer, n_embd, generation)
    return path


def _parts(n_layer: int, n_embd: int, generation: str):
    """(name, tensor) of a random x070 model, made a layer at a time (layer i's tensors from the second
    layer of a small two-layer model with its own seed; layer 0 and the top from seed 0)."""
    import torch

    from rwkv_hub.core.synth import random_state_dict

    first = random_state_dict(n_layer=2, n_embd=n_embd, vocab_size=16, seed=0, generation=generation)
    yield "emb.weight", (torch.randn(VOCAB, n_embd) * 1e-2).to(torch.bfloat16)
    for k, v in first.items():
        if k.startswith("blocks.0."):
            yield k, v
    del first
    for i in range(1, n_layer):
        layer = random_state_dict(n_layer=2, n_embd=n_embd, vocab_size=16, seed=i, generation=generation)
        for k, v in layer.items():
            if k.startswith("blocks.1."):
                yield f"blocks.{i}." + k[len("blocks.1.") :], v
    yield "ln_out.weight", torch.ones(n_embd, dtype=torch.bfloat16)
    yield "ln_out.bias", torch.zeros(n_embd, dtype=torch.bfloat16)
    yield "head.weight", (torch.randn(VOCAB, n_embd) * n_embd**-0.5).to(torch.bfloat16)


def write_streamed(path: Path, n_layer: int, n_embd: int, generation: str) -> None:
    """A safetensors file written tensor by tensor: the header (every name, shape and offset, known from
    one layer's tensors) then the data, so no more than a layer is in memory at once."""
    import torch
    from safetensors.torch import _TYPES  # the format's name of each torch dtype

    names = {v: k for k, v in _TYPES.items()}
    layout, offset = {}, 0
    for name, t in _parts_shapes(n_layer, n_embd, generation):
        size = t[2]
        layout[name] = {"dtype": names[t[1]], "shape": list(t[0]), "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps(layout, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for name, t in _parts(n_layer, n_embd, generation):
            assert list(t.shape) == layout[name]["shape"], name
            f.write(t.contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    tmp.replace(path)


def _parts_shapes(n_layer: int, n_embd: int, generation: str):
    """The names, shapes, dtypes and byte sizes `_parts` will yield, from one layer's real tensors."""
    import torch

    from rwkv_hub.core.synth import random_state_dict

    sd = random_state_dict(n_layer=2, n_embd=n_embd, vocab_size=16, seed=0, generation=generation)

    def info(t):
        return tuple(t.shape), t.dtype, t.numel() * t.element_size()

    bf16 = torch.bfloat16
    yield "emb.weight", ((VOCAB, n_embd), bf16, VOCAB * n_embd * 2)
    for k, v in sd.items():
        if k.startswith("blocks.0."):
            yield k, info(v)
    for i in range(1, n_layer):
        for k, v in sd.items():
            if k.startswith("blocks.1."):
                yield f"blocks.{i}." + k[len("blocks.1.") :], info(v)
    yield "ln_out.weight", ((n_embd,), bf16, n_embd * 2)
    yield "ln_out.bias", ((n_embd,), bf16, n_embd * 2)
    yield "head.weight", ((VOCAB, n_embd), bf16, VOCAB * n_embd * 2)


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def need_bytes(path: Path, strategy: str, official: bool) -> int:
    from rwkv_hub.core import inspect_checkpoint

    info = inspect_checkpoint(path)
    if official:
        return 2 * info.bytes_per_strategy()["cpu fp32"] + 300 * 2**20
    return info.bytes_per_strategy()[strategy] + 300 * 2**20


def pth_copy(path: Path) -> Path:
    """The official package reads only torch.save files: a .pth twin of the checkpoint, made in a child."""
    pth = path.with_suffix(".pth")
    if not pth.exists():
        code = (
            "import sys, torch; from safetensors.torch import load_file; "
            "torch.save(load_file(sys.argv[1]), sys.argv[2] + '.tmp')"
        )
        subprocess.run([sys.executable, "-c", code, str(path), str(pth)], check=True, timeout=3600)
        Path(str(pth) + ".tmp").replace(pth)
    return pth


def measure(path: Path, strategy: str, official: bool, generation: str = "x070") -> dict:
    need = need_bytes(path, strategy, official)
    free = available_bytes()
    if need > HEADROOM * free:
        return {"fits": False, "need": need, "free": free}
    if official:
        path = pth_copy(path)
    code = CHILD.format(root=str(ROOT))
    args = [sys.executable, "-c", code, str(path), strategy, str(DECODE_TOKENS), "1" if official else "0", generation]
    r = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        return {"fits": True, "error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    return {"fits": True, **json.loads(r.stdout.strip().splitlines()[-1])}


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--strategies", default="cpu fp32,cpu bf16,cpu bf16i8")
    ap.add_argument("--generations", default="x070", help="x070 and/or x060, comma-separated")
    ap.add_argument("--no-official", action="store_true", help="skip the official package")
    a = ap.parse_args()
    from rwkv_hub.bench import machine_info
    from rwkv_hub.core import inspect_checkpoint

    sizes = [s for s in a.sizes.split(",") if s]
    strategies = [s.strip() for s in a.strategies.split(",") if s.strip()]
    rows = []
    for generation, size in [(g, s) for g in a.generations.split(",") for s in sizes]:
        t0 = time.perf_counter()
        path = checkpoint(size, generation)
        print(f"{generation} {size}: checkpoint ready in {time.perf_counter() - t0:.0f} s", flush=True)
        params = inspect_checkpoint(path).n_params
        for strategy in strategies:
            for official in (False, True):
                if official and (a.no_official or strategy not in ("cpu fp32", "cpu bf16")):
                    continue
                r = measure(path, strategy, official, generation)
                r |= {"size": size, "generation": generation, "strategy": strategy, "official": official}
                r["params"] = params
                r["measured"] = datetime.date.today().isoformat()
                rows.append(r)
                print(json.dumps(r), flush=True)
    write_doc(merged(rows), machine_info())
    return 0


def merged(rows: list[dict]) -> list[dict]:
    """This run's rows over those of earlier runs (bench-out/memory-rows.json), so the table can be built
    in several runs (each size's checkpoints take disk space: delete one size's before the next)."""
    from rwkv_hub.core.atomic import write_text

    store = ROOT / "bench-out" / "memory-rows.json"
    old = json.loads(store.read_text()) if store.exists() else []
    key = lambda r: (r["generation"], r["size"], r["strategy"], r["official"])  # noqa: E731
    fresh = {key(r) for r in rows}
    out = [r for r in old if key(r) not in fresh] + rows
    out.sort(key=lambda r: (r["generation"] != "x070", list(SIZES).index(r["size"]), r["strategy"], r["official"]))
    write_text(store, json.dumps(out, indent=1))
    return out


def write_doc(rows: list[dict], m: dict) -> None:
    from rwkv_hub.core.atomic import write_text

    guide_col = {"cpu fp32": 0, "cpu bf16": 1, "cpu bf16i8": 2, "cpu fp32i8": 2}
    lines = [
        "# Memory and speed by model size",
        "",
        "The RWKV guide's table of memory per model size and strategy, measured for rwkv-hub. Produced by",
        "`python benchmarks/bench_memory.py` on "
        f"{datetime.date.today().isoformat()}: {m['cpu']}, {m['cores']} cores, "
        f"{m['ram_bytes'] / 2**30:.0f} GiB RAM, torch {m['torch']}, no GPU.",
        "",
        "Random-weight RWKV-7 (`x070`, G1) and RWKV-6 (`x060`, World) checkpoints of the released shapes",
        "nearest the guide's sizes (vocabulary 65,536; both generations use these layer counts and widths).",
        "Peak RSS is the process's high-water mark after loading and decoding 16 tokens; tokens/s is",
        "single-sequence greedy decode. The guide's column is its figure for the same precision: CPU fp32",
        "for `cpu fp32`, CUDA fp16 for `cpu bf16` (16-bit weights either way), CUDA int8 for the int8",
        'strategies, with rwkv.cpp\'s Q5_1 beside it. "Does not fit" means the weights alone exceed what',
        "this machine has free, so the run was not started.",
        "",
        "Two things to keep in mind reading it. The guide's 16-bit and int8 figures are GPU memory, and",
        "rwkv.cpp is a C program: neither holds a Python interpreter and torch, which take about 0.3 GB of",
        "RSS before any weight is read, and a checkpoint's weights alone can come near the guide's figure",
        "(1.5B in 16 bits: 3.16 GB of weights against the guide's 3.2 GB). And the guide's sizes are the",
        "RWKV-4/5 models of its time; the shapes here are a few percent larger or smaller.",
        "",
        "rwkv-hub maps the embedding from the checkpoint file, so only the rows tokens read are resident;",
        'rows whose "measured" column says "earlier" were measured when it held a copy of the embedding',
        "(0.27 GB more for 1.5B, 0.34 GB for 3B, 0.54 GB for 7B, 0.67 GB for 14B, twice that in fp32).",
        "",
        "int8 rows use rwkv-hub's own int8 kernel, which keeps the weights as stored; a row marked",
        "(fbgemm) was measured with PyTorch's fbgemm kernel (the choice on CPUs with VNNI, and on this",
        "machine before the own kernel existed), which holds a packed copy about 11% larger than the weights.",
        "",
        "| size | params | strategy | rwkv-hub peak RSS | guide | rwkv.cpp Q5_1 | tokens/s"
        " | official peak RSS | official tokens/s | measured |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["generation"], r["size"], r["strategy"], r["official"]): r for r in rows}
    for (generation, size, strategy, official), r in by.items():
        if official:
            continue
        label = SIZES[size][2]
        guide = GUIDE[label][guide_col.get(strategy, 1)]
        cpp = GUIDE[label][3] if "i8" in strategy else None
        if "peak_rss" in r:
            ours = gb(r["peak_rss"])
        elif not r["fits"]:
            ours = f"does not fit ({gb(r['need'])} needed, {gb(r['free'])} free)"
        else:
            ours = f"failed: {r['error']}"
        off = by.get((generation, size, strategy, True), {})
        off_rss = gb(off["peak_rss"]) if "peak_rss" in off else ("does not fit" if off and not off["fits"] else "")
        off_tok = f"{off['tok_s']:.2f}" if "tok_s" in off else ""
        guide_text = f"{guide} GB" if guide else ""
        cpp_text = f"{cpp} GB" if cpp else ""
        tok = f"{r['tok_s']:.2f}" if "tok_s" in r else ""
        if r.get("int8_kernel") == "fbgemm" and "peak_rss" in r:
            ours += " (fbgemm)"
        lines.append(
            f"| {label} ({generation} {size}) | {r['params'] / 1e9:.2f} B | `{strategy}` | {ours} | {guide_text} |"
            f" {cpp_text} |"
            f" {tok} | {off_rss} | {off_tok} | {r.get('measured', 'earlier')} |"
        )
    lines += [""]
    write_text(ROOT / "docs" / "memory.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
