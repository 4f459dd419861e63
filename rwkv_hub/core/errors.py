"""Errors a user can act on: each message says what was wrong, where, and what to do."""


class RWKVHubError(Exception):
    """Base class for every error rwkv-hub reports to users; its text is one line, no traceback needed."""


class CheckpointError(RWKVHubError):
    """The model file is missing, unreadable, truncated, or not an RWKV checkpoint this runtime can run."""


class StrategyError(RWKVHubError):
    """The strategy string is unknown, or asks for a device this machine does not have."""


class StateError(RWKVHubError):
    """A recurrent state does not fit the model it is used with, or its file is damaged."""
