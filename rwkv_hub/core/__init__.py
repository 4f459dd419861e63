"""The model runtime: checkpoints, strategies, recurrent states, batched forward passes, the engine.

Names are imported on first use, so importing a light submodule (errors, the built-in model's path)
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {
    "CheckpointError": ".errors",
    "RWKVHubError": ".errors",
    "StateError": ".errors",
    "StrategyError": ".errors",
    "CheckpointInfo": ".inspect",
    "inspect_checkpoint": ".inspect",
    "Model": ".model",
    "load": ".model",
    "State": ".state",
    "Strategy": ".strategy",
    "parse_strategy": ".strategy",
}
__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "Model",
    "RWKVHubError",
    "State",
    "StateError",
    "Strategy",
    "StrategyError",
    "inspect_checkpoint",
    "load",
    "parse_strategy",
]

if TYPE_CHECKING:
    from .errors import CheckpointError, RWKVHubError, StateError, StrategyError
    from .inspect import CheckpointInfo, inspect_checkpoint
    from .model import Model, load
    from .state import State
    from .strategy import Strategy, parse_strategy


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
