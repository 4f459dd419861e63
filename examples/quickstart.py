"""Load an RWKV-7 checkpoint, run a batched forward pass, and save and reload a state.

Usage: python examples/quickstart.py [CHECKPOINT] [--strategy "cpu bf16"]

Without a checkpoint it writes a small random-weight one to a temporary folder, so the whole path
from file to logits can be tried on a fresh machine with nothing downloaded. Random weights give
meaningless logits; the shapes, timings and state sizes are real.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import rwkv_hub
from rwkv_hub.core import inspect_checkpoint
from rwkv_hub.core.synth import write_random_checkpoint


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
    with tempfile.TemporaryDirectory() as tmp:
        path = checkpoint or write_random_checkpoint(Path(tmp) / "random.pth", n_layer=2, n_embd=256, vocab_size=1024)
        info = inspect_checkpoint(path)
        print(
            f"{path.name}: {info.n_layer} layers, n_embd {info.n_embd}, vocab {info.vocab_size}, "
            f"{info.n_params:,} parameters"
        )

        start = time.perf_counter()
        model = rwkv_hub.load(path, strategy=strategy)
        print(f"loaded with strategy {strategy!r} in {time.perf_counter() - start:.2f} s")

        logits, state = model.forward([1, 2, 3], model.new_state())
        print(f"forward: 3 tokens -> logits of shape {tuple(logits.shape)}; state is {state.nbytes:,} bytes")

        logits, states = model.forward_batch([[1, 2, 3], [4]], [model.new_state(), model.new_state()])
        print(f"forward_batch: 2 streams -> logits of shape {tuple(logits.shape)}")

        saved = Path(tmp) / "state.safetensors"
        state.save(saved)
        reloaded = model.load_state(saved)
        same, _ = model.forward([4], reloaded)
        again, _ = model.forward([4], state)
        print(f"state saved and reloaded: next-token logits match = {bool((same == again).all())}")


if __name__ == "__main__":
    raise SystemExit(main())
