"""Decoding parameters of one sequence, checked once when they are made so the sampler never sees bad values."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import RWKVHubError

MAX_TEMPERATURE = 5.0
PENALTY_RANGE = (-2.0, 2.0)
BIAS_RANGE = (-100.0, 100.0)
MAX_BIAS_ENTRIES = 1024
MAX_STOP_STRINGS = 32
MAX_TOKENS = 1_000_000


class ParameterError(RWKVHubError, ValueError):
    """A decoding parameter is out of its range; the message names the parameter, the value and the range."""


def _number(name: str, value: object, lo: float, hi: float, note: str = "") -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not lo <= value <= hi:
        raise ParameterError(f"{name} = {value!r} is out of range: must be a number from {lo:g} to {hi:g}{note}")
    return float(value)


def _integer(name: str, value: object, lo: int, hi: int, note: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ParameterError(f"{name} = {value!r} is out of range: must be an integer from {lo} to {hi}{note}")
    return value


def _token_ids(name: str, ids: Iterable[object]) -> tuple[int, ...]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise ParameterError(f"{name} = {ids!r} must be a list of token ids (integers >= 0)")
    return tuple(sorted({_integer(f"{name} entry", i, 0, 2**31 - 1) for i in ids}))


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next tokens of one sequence. Defaults are ChatRWKV's chat demo and RWKV Runner's.

    temperature 0 or top_p 0 means greedy (the most likely token). Penalties follow the official
    `rwkv` PIPELINE arithmetic; see docs/sampling.md for every parameter and its recommended range.
    """

    temperature: float = 1.0
    top_p: float = 0.3
    top_k: int = 0
    presence_penalty: float = 0.5
    frequency_penalty: float = 0.5
    penalty_decay: float = 0.996
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    banned_tokens: tuple[int, ...] = ()
    stop_tokens: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    max_tokens: int = 1000
    seed: int | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "temperature", _number("temperature", self.temperature, 0, MAX_TEMPERATURE, " (0 means greedy)"))
        put(self, "top_p", _number("top_p", self.top_p, 0, 1, " (0 means greedy)"))
        put(self, "top_k", _integer("top_k", self.top_k, 0, 2**31 - 1, " (0 means off)"))
        for name in ("presence_penalty", "frequency_penalty"):
            put(self, name, _number(name, getattr(self, name), *PENALTY_RANGE))
        put(self, "penalty_decay", _number("penalty_decay", self.penalty_decay, 0, 1))
        if not isinstance(self.logit_bias, Mapping) or len(self.logit_bias) > MAX_BIAS_ENTRIES:
            raise ParameterError(
                f"logit_bias must be a mapping of token id to bias with at most {MAX_BIAS_ENTRIES} entries"
            )
        bias = {
            _integer("logit_bias token id", k, 0, 2**31 - 1): _number(f"logit_bias[{k}]", v, *BIAS_RANGE)
            for k, v in self.logit_bias.items()
        }
        put(self, "logit_bias", dict(sorted(bias.items())))
        put(self, "banned_tokens", _token_ids("banned_tokens", self.banned_tokens))
        put(self, "stop_tokens", _token_ids("stop_tokens", self.stop_tokens))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
            raise ParameterError(f"stop = {self.stop!r}: must be at most {MAX_STOP_STRINGS} non-empty strings")
        put(self, "stop", stop)
        put(self, "max_tokens", _integer("max_tokens", self.max_tokens, 1, MAX_TOKENS))
        if self.seed is not None:
            _integer("seed", self.seed, 0, 2**64 - 1, " or None for a random seed")

    def check_vocabulary(self, vocab_size: int) -> None:
        """The token ids named here (banned, biased, stopping) must be the model's; checked when a request
        is submitted, so a wrong id is the request's error before anything runs."""
        named = (
            ("banned_tokens", self.banned_tokens),
            ("logit_bias", tuple(self.logit_bias)),
            ("stop_tokens", self.stop_tokens),
        )
        for name, ids in named:
            if ids and max(ids) >= vocab_size:
                raise ParameterError(f"{name} has token id {max(ids)}, outside the vocabulary 0..{vocab_size - 1}")
        if len(self.banned_tokens) >= vocab_size:
            raise ParameterError(f"banned_tokens bans all {vocab_size} tokens of the vocabulary")

    @property
    def greedy(self) -> bool:
        """True when the most likely token is always taken (temperature 0 or top_p 0)."""
        return self.temperature == 0 or self.top_p == 0

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0
