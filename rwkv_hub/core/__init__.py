"""The model runtime: checkpoints, strategies, recurrent states and batched forward passes."""

from .errors import CheckpointError, RWKVHubError, StateError, StrategyError
from .model import Model, load
from .state import State
from .strategy import Strategy, parse_strategy

__all__ = [
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
