"""llama.cpp as a peer in the runtime benchmark: the same RWKV-7 checkpoint, the same tokens, the same machine.

rwkv.cpp's RWKV work now lives on in llama.cpp (ggml), the fastest CPU runtime for RWKV-7 that users reach
for. This module turns an official `.pth` into GGUF files llama.cpp reads and measures them exactly as
`rwkv_hub.bench` measures rwkv-hub: single-stream decode, prefill of a prompt from an empty state, peak RSS.

    python benchmarks/peer_llamacpp.py --model M.pth --type q8_0 [--prompt-tokens 512 ...]

It needs the `llama-cpp-python` and `gguf` packages (benchmarks only, not rwkv-hub's dependencies):

    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python gguf

The GGUF layout (tensor names, the six token-shift mixes stacked into one tensor, LoRA matrices stored
(out, in), layer 0's unused value-residual LoRA present) is the one llama.cpp's RWKV-7 loader reads.
Matrices go to F16 and everything else to F32, as llama.cpp's own converter does; Q8_0 comes from
llama.cpp's quantizer so that it follows llama.cpp's own rules for which tensors to quantize.
Printed result: one line `BENCH-RESULT {json}` with the keys `rwkv_hub.bench` uses.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

MARK = "BENCH-RESULT "
TYPES = ("f16", "q8_0")
# the six token-shift mixes of the time-mix, in the order llama.cpp's fused tensor holds them
LERP_ORDER = ("r", "w", "k", "v", "a", "g")
# official per-layer names -> GGUF names ({i}: layer); "att." vectors are squeezed, LoRA matrices transposed
LAYER_NAMES = {
    "ln1.weight": "attn_norm.weight",
    "ln1.bias": "attn_norm.bias",
    "ln2.weight": "attn_norm_2.weight",
    "ln2.bias": "attn_norm_2.bias",
    "att.w0": "time_mix_w0.weight",
    "att.w1": "time_mix_w1.weight",
    "att.w2": "time_mix_w2.weight",
    "att.a0": "time_mix_a0.weight",
    "att.a1": "time_mix_a1.weight",
    "att.a2": "time_mix_a2.weight",
    "att.v0": "time_mix_v0.weight",
    "att.v1": "time_mix_v1.weight",
    "att.v2": "time_mix_v2.weight",
    "att.g1": "time_mix_g1.weight",
    "att.g2": "time_mix_g2.weight",
    "att.k_k": "time_mix_k_k.weight",
    "att.k_a": "time_mix_k_a.weight",
    "att.r_k": "time_mix_r_k.weight",
    "att.key.weight": "time_mix_key.weight",
    "att.value.weight": "time_mix_value.weight",
    "att.receptance.weight": "time_mix_receptance.weight",
    "att.output.weight": "time_mix_output.weight",
    "att.ln_x.weight": "time_mix_ln.weight",
    "att.ln_x.bias": "time_mix_ln.bias",
    "ffn.x_k": "channel_mix_lerp_k.weight",
    "ffn.key.weight": "channel_mix_key.weight",
    "ffn.value.weight": "channel_mix_value.weight",
}
GLOBAL_NAMES = {
    "emb.weight": "token_embd.weight",
    "blocks.0.ln0.weight": "token_embd_norm.weight",
    "blocks.0.ln0.bias": "token_embd_norm.bias",
    "ln_out.weight": "output_norm.weight",
    "ln_out.bias": "output_norm.bias",
    "head.weight": "output.weight",
}
LORA = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")
LARGE = ("key", "value", "receptance", "output")


def write_gguf(pth: Path, out: Path, matrices: str = "f16") -> None:
    """Write `pth` (an official RWKV-7 checkpoint) as a GGUF that llama.cpp loads, its matrices in `matrices`
    (f16 or f32); atomic."""
    import gguf
    import numpy as np
    import torch

    from rwkv_hub.core.atomic import replace_file
    from rwkv_hub.core.checkpoint import open_checkpoint
    from rwkv_hub.core.spec import read_spec

    tensors = open_checkpoint(pth)
    spec = read_spec(tensors, pth)
    if spec.generation != "x070":
        raise ValueError(f"{pth}: an RWKV-7 checkpoint is needed, not {spec.generation}")
    n_embd = spec.n_embd

    def add(w: gguf.GGUFWriter, name: str, t: torch.Tensor, matrix: bool) -> None:
        a = t.float().numpy()
        w.add_tensor(name, a.astype(np.float16 if matrix and matrices == "f16" else np.float32))

    def build(tmp: Path) -> None:
        w = gguf.GGUFWriter(str(tmp), "rwkv7")
        w.add_context_length(1 << 20)
        w.add_embedding_length(n_embd)
        w.add_block_count(spec.n_layer)
        w.add_layer_norm_eps(1e-5)
        w.add_wkv_head_size(spec.head_size)
        w.add_decay_lora_rank(spec.lora["decay"])
        w.add_iclr_lora_rank(spec.lora["a"])
        w.add_value_residual_mix_lora_rank(spec.lora["value"])
        w.add_gate_lora_rank(spec.lora["gate"])
        w.add_feed_forward_length(spec.ffn_size)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if matrices == "f16" else gguf.LlamaFileType.ALL_F32)
        w.add_head_count(0)
        _add_vocab(w, spec.vocab_size)
        for src, dst in GLOBAL_NAMES.items():
            add(w, dst, tensors[src].read(), matrix=len(tensors[src].shape) == 2)
        for i in range(spec.n_layer):
            p = f"blocks.{i}."
            mixes = torch.stack([tensors[p + f"att.x_{m}"].read().reshape(1, 1, n_embd) for m in LERP_ORDER])
            add(w, f"blk.{i}.time_mix_lerp_fused.weight", mixes, matrix=False)
            for src, dst in LAYER_NAMES.items():
                key = p + src
                if key not in tensors and src.startswith("att.v") and i == 0:
                    # released files have no value-residual LoRA in layer 0 (unused there); llama.cpp wants one
                    key = p + "att.a" + src[5:]
                t, short = tensors[key].read(), src.split(".")[1]
                if short in LORA:
                    add(w, f"blk.{i}.{dst}", t.t().contiguous(), matrix=True)
                elif short in LARGE:
                    add(w, f"blk.{i}.{dst}", t, matrix=True)
                elif src == "ffn.x_k":
                    add(w, f"blk.{i}.{dst}", t.reshape(1, 1, n_embd), matrix=False)
                else:
                    add(w, f"blk.{i}.{dst}", t.reshape(-1), matrix=False)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    replace_file(out, build)


def _add_vocab(w, vocab: int) -> None:
    """The RWKV "World" vocabulary (from the official package) padded to the model's vocab size; id 0,
    which the vocabulary leaves free, is llama.cpp's "<s>"."""
    import gguf

    from rwkv_hub.core.tokenizer.world import official_vocab_path, read_vocab

    words = read_vocab(official_vocab_path())
    tokens: list[bytes] = [b"<s>"]
    types = [gguf.TokenType.CONTROL]
    while len(tokens) < vocab and len(tokens) in words:
        tokens.append(repr(words[len(tokens)])[2:-1].encode("utf-8"))
        types.append(gguf.TokenType.NORMAL)
    while len(tokens) < vocab:
        tokens.append(f"[PAD{len(tokens)}]".encode())
        types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model("rwkv")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)


def quantize(src: Path, dst: Path, kind: str) -> None:
    """Quantize a GGUF with llama.cpp's own quantizer (its rules decide which tensors become `kind`)."""
    import llama_cpp

    from rwkv_hub.core.atomic import replace_file

    ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[kind]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1

    def build(tmp: Path) -> None:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama.cpp could not quantize {src} to {kind} (code {rc})")

    replace_file(dst, build)


def gguf_for(pth: Path, kind: str) -> Path:
    """The GGUF of `pth` in `kind` (f16 or q8_0), written next to it once and reused."""
    f16 = pth.with_suffix(".f16.gguf")
    if not f16.exists():
        write_gguf(pth, f16)
    if kind == "f16":
        return f16
    out = pth.with_suffix(f".{kind}.gguf")
    if not out.exists():
        quantize(f16, out, kind)
    return out


def measure(path: Path, prompt_tokens: int, decode_tokens: int, repeats: int, threads: int) -> dict[str, Any]:
    """Time llama.cpp on `path` with the tokens and warm-ups `rwkv_hub.bench.measure` uses."""
    import llama_cpp

    from rwkv_hub.bench import (
        DECODE_WARMUP,
        current_rss_bytes,
        load_average,
        peak_rss_bytes,
        random_tokens,
        time_decode,
        time_prefill,
    )

    load_before = load_average()
    rss_before = current_rss_bytes()
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=prompt_tokens + (decode_tokens + DECODE_WARMUP) * (repeats + 1) + 64,
        n_batch=prompt_tokens,
        n_ubatch=prompt_tokens,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    load_s = time.perf_counter() - t0
    load_peak = peak_rss_bytes()
    vocab = llm.n_vocab()
    prompt = random_tokens(prompt_tokens, vocab, 0)
    stream = random_tokens(decode_tokens + DECODE_WARMUP, vocab, 1)

    def restart() -> None:
        llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)

    restart()
    decode = time_decode(lambda t: llm.eval([t]), stream[:DECODE_WARMUP], stream[DECODE_WARMUP:], repeats)

    def prefill(p: list[int]) -> None:
        restart()
        llm.eval(list(p))

    pre = time_prefill(prefill, prompt, repeats)
    weight_bytes = path.stat().st_size
    return {
        "runtime": "llama.cpp",
        "model": str(path),
        "decode_tok_s": statistics.median(decode),
        "prefill_tok_s": statistics.median(pre),
        "aggregate_tok_s": {"1": statistics.median(decode)},
        "decode_tok_s_runs": decode,
        "prefill_tok_s_runs": pre,
        "weight_bytes": weight_bytes,
        "peak_rss_bytes": peak_rss_bytes(),
        "prompt_tokens": prompt_tokens,
        "decode_tokens": decode_tokens,
        "repeats": repeats,
        "torch_threads": threads,
        "load_s": load_s,
        "rss_before_load_bytes": rss_before,
        "peak_rss_after_load_bytes": load_peak,
        "load_avg": [load_before, load_average()],
        "llama_cpp_python": llama_cpp.__version__,
    }


def available() -> str | None:
    """None when llama.cpp's packages are installed, else which are not. Only looked up, not imported:
    a broken native build shows up as the measuring child's error."""
    missing = [mod for mod in ("llama_cpp", "gguf") if importlib.util.find_spec(mod) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="an official RWKV-7 .pth")
    p.add_argument("--type", choices=TYPES, default="q8_0")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--convert-only", action="store_true", help="write the GGUF file and stop")
    a = p.parse_args(argv)
    why = available()
    if why:
        print(f"error: llama.cpp peer unavailable ({why}); see {Path(__file__).name}'s docstring", file=sys.stderr)
        return 2
    path = gguf_for(a.model, a.type)
    if a.convert_only:
        print(path)
        return 0
    out = measure(path, a.prompt_tokens, a.decode_tokens, a.repeats, a.threads)
    out["strategy"] = a.type.upper()
    print(MARK + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
