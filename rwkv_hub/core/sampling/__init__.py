"""Turning logits into tokens: decoding parameters and the batched sampler.

The parameters need no torch; the sampler is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .params import ParameterError, SamplingParams

__all__ = ["ParameterError", "Sampler", "SamplingParams", "no_penalty_ids", "unusable_ids"]

if TYPE_CHECKING:
    from .sampler import Sampler, no_penalty_ids, unusable_ids


def __getattr__(name: str):
    if name in ("Sampler", "no_penalty_ids", "unusable_ids"):
        return getattr(importlib.import_module(".sampler", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
