"""The built-in demo model: a tiny byte-level RWKV-7 trained by rwkv-hub on Python's standard library.

It ships inside the package (`rwkv_hub/models/`) so that everything works before a real checkpoint is
downloaded; `rwkv_hub.load()` with no path, the CLI and the daemon fall back to it and say so in one line.
How it was made and what it can do: docs/default-model.md.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_MODEL = Path(__file__).resolve().parent.parent / "models" / "rwkv7-stdlib-demo.pth"
NOTICE = (
    "using the built-in demo model; for real answers give a real RWKV checkpoint "
    "(--model PATH, `model = PATH` in the config, or rwkv_hub.load(PATH))"
)


def builtin_model_path() -> Path:
    """Where the built-in checkpoint is installed (its tokenizer record and training record lie beside it)."""
    return BUILTIN_MODEL
