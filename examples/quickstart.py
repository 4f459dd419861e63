"""rwkv-hub in one minute: chat, complete code, run streams in a batch, and resume from a saved state.

Usage: python examples/quickstart.py [CHECKPOINT] [--strategy "cpu bf16"]

Without a checkpoint it uses the built-in demo model, a tiny byte-level RWKV-7 that rwkv-hub trained on
Python's standard library (docs/default-model.md): it answers questions about Python functions in a
sentence and writes plausible Python, nothing more. Point it at a real RWKV-7 checkpoint for real answers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import rwkv_hub
from rwkv_hub.core import inspect_checkpoint
from rwkv_hub.core.builtin import BUILTIN_MODEL

CHAT = "User: What does `json.dumps` do?\n\nAssistant:"
CODE = 'def read_lines(path):\n    """Return the lines of a text file, without their line endings."""\n'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, help="an RWKV-7 .pth or .safetensors file")
    parser.add_argument("--strategy", default="cpu bf16", help='for example "cpu fp32" or "cuda fp16"')
    args = parser.parse_args()
    try:
        run(args.checkpoint, args.strategy)
    except rwkv_hub.RWKVHubError as exc:
        parser.exit(2, f"quickstart: error: {exc}\n")
    return 0


def run(checkpoint: Path | None, strategy: str) -> None:
    info = inspect_checkpoint(checkpoint or BUILTIN_MODEL)
    start = time.perf_counter()
    model = rwkv_hub.load(checkpoint, strategy=strategy)  # no path: the built-in demo model, with a notice
    print(
        f"{model.path.name}: {info.n_layer} layers, width {info.n_embd}, vocab {info.vocab_size}, "
        f"{info.n_params:,} parameters; loaded as {strategy!r} in {time.perf_counter() - start:.2f} s"
    )

    print("\n--- chat (stops by itself at the blank line that ends a turn)")
    chat = model.generate(CHAT, max_tokens=300, stop=("\n\n",), seed=0)
    print(CHAT + "".join(chat))
    r = chat.result
    print(f"[{r.finish_reason}: {r.completion_tokens} tokens at {r.tokens_per_s:.0f} tokens/s]")

    print("\n--- code completion (greedy)")
    code = model.generate(CODE, temperature=0, max_tokens=120, stop=("\n\n",))
    print(CODE + "".join(code))

    print("--- four streams in one batch")
    prompts = [model.tokenizer.encode(p) for p in ("import os", "def main():", "User: hi", "class Stack:")]
    logits, states = model.forward_batch(prompts, [model.new_state() for _ in prompts])
    print(f"forward_batch: {len(prompts)} streams -> logits of shape {tuple(logits.shape)}")

    print("\n--- save a conversation's state and resume it")
    state = chat.result.state
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "state.safetensors"
        state.save(saved)
        reloaded = model.load_state(saved)
    nxt = model.tokenizer.encode("\n\nUser:")
    same, _ = model.forward(nxt, reloaded)
    again, _ = model.forward(nxt, state)
    print(
        f"state of {state.nbytes:,} bytes saved and reloaded: next-token logits match = {bool((same == again).all())}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
