"""rwkv-hub: run RWKV language models locally inside editors, chat apps and bots."""

from .core import CheckpointError, Model, RWKVHubError, State, StateError, StrategyError, load

__version__ = "0.1.0"
__all__ = ["CheckpointError", "Model", "RWKVHubError", "State", "StateError", "StrategyError", "__version__", "load"]
