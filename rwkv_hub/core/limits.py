"""The engine's bounds, in a module of their own: the config file reads and checks them without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineLimits:
    """Bounds on what the engine accepts; requests beyond them are refused at once."""

    max_active: int = 16  # streams in the batch at once
    max_queue: int = 64  # requests waiting for a slot
    max_prompt_tokens: int = 32768
    max_new_tokens: int = 4096
    prefill_chunk: int = 64  # prompt tokens one stream feeds per step
    prefill_budget: int = 128  # prompt tokens all streams together feed per step
    cache_interval: int = 1024  # store a state every this many prompt tokens

    def __post_init__(self) -> None:
        for name in ("max_active", "max_queue", "max_prompt_tokens", "max_new_tokens", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.prefill_budget < self.prefill_chunk:
            raise ValueError("prefill_budget must be at least prefill_chunk")
        if self.cache_interval % self.prefill_chunk:
            raise ValueError("cache_interval must be a multiple of prefill_chunk")
