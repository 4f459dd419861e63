"""rwkv-hub: run RWKV language models locally inside editors, chat apps and bots.

The runtime's names are imported on first use, so `import rwkv_hub` (and the `rwkv-hub` command's
`--help` and listing commands) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = [
    "CheckpointError",
    "Model",
    "RWKVHubError",
    "State",
    "StateError",
    "StrategyError",
    "__version__",
    "hookimpl",
    "load",
]

if TYPE_CHECKING:
    from .core import CheckpointError, Model, RWKVHubError, State, StateError, StrategyError, load


def __getattr__(name: str):
    if name in __all__ and name not in ("hookimpl", "__version__"):
        return getattr(importlib.import_module(".core", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
