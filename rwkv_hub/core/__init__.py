"""The model runtime: checkpoints, strategies, recurrent states and batched forward passes."""

from .errors import CheckpointError, RWKVHubError, StateError, StrategyError
from .inspect import CheckpointInfo, inspect_checkpoint
from .model import Model, load
from .state import State
from .strategy import Strategy, parse_strategy

__all__ = [
    "CheckpointInfo",
    "inspect_checkpoint",
    "CheckpointError",
    "Model",
    "RWKVHubError",
    "State",
    "StateError",
    "Strategy",
    "StrategyError",
    "load",
    "parse_strategy",
]
