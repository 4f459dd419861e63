"""Turning logits into tokens: decoding parameters and the batched sampler."""

from .params import ParameterError, SamplingParams
from .sampler import Sampler, no_penalty_ids

__all__ = ["ParameterError", "Sampler", "SamplingParams", "no_penalty_ids"]
