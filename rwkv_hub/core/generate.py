"""Generate text from one prompt: prefill, then sample, feed and detokenize token by token.

The loop hands out text deltas as they complete. Stop strings are matched on the decoded text, so a
stop string spread over several tokens is still caught; text that might be the start of a stop string
is held back until it is known not to be, so a stop string never reaches the caller. The final state
has read the prompt and every generated token, so a chat continues from it without re-reading.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .errors import RWKVHubError
from .sampling import Sampler, SamplingParams, no_penalty_ids, unusable_ids
from .state import State
from .tokenizer import StreamDecoder


@dataclass
class GenerationResult:
    """Why and how a generation ended."""

    text: str
    finish_reason: str  # "stop" (stop string or token), "length" (max_tokens) or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    state: State
    prefill_s: float
    decode_s: float
    tokens: list[int] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.decode_s if self.decode_s > 0 else 0.0


class StopMatcher:
    """Cut a text stream at the first stop string, holding back what could still become one.

    Each stop string is matched by a Knuth-Morris-Pratt automaton that remembers how much of it the text
    ends with, so a new character costs amortized O(1) per stop string, however long the stop strings
    are: a long stop string costs its length once, not its length on every token. The earliest stop
    string to be completed wins (of those completed by the same character, the longest).
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self._fail = [_failure(s) for s in self.stops]
        self._matched = [0] * len(self.stops)  # per stop string: the length of its prefix that ends the text
        self._pending = ""

    def push(self, delta: str) -> tuple[str, bool]:
        """Add decoded text; return (text safe to show, whether a stop string was reached)."""
        buf = self._pending + delta
        for i, ch in enumerate(delta, len(self._pending) + 1):  # i: the length of buf up to and with ch
            cut = -1
            for k, stop in enumerate(self.stops):
                n, fail = self._matched[k], self._fail[k]
                while n and stop[n] != ch:
                    n = fail[n - 1]
                n = n + 1 if stop[n] == ch else 0
                self._matched[k] = n
                if n == len(stop) and (cut < 0 or i - n < cut):
                    cut = i - n
            if cut >= 0:
                self._reset()
                return buf[:cut], True
        keep = max(self._matched, default=0)
        self._pending = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """The stream ended without a stop string: whatever was held back is ordinary text."""
        text = self._pending
        self._reset()
        return text

    def _reset(self) -> None:
        self._pending = ""
        self._matched = [0] * len(self.stops)


def _failure(stop: str) -> list[int]:
    """KMP's failure table: for each prefix of `stop`, the length of its longest proper border."""
    fail = [0] * len(stop)
    k = 0
    for i in range(1, len(stop)):
        while k and stop[i] != stop[k]:
            k = fail[k - 1]
        if stop[i] == stop[k]:
            k += 1
        fail[i] = k
    return fail


class Generation:
    """Iterate for text deltas; afterwards `result` says why it stopped. `cancel()` ends it at the next token.

    Made by `Model.generate`; the model work happens while iterating, in the iterating thread.
    """

    def __init__(self, model, prompt: str | Sequence[int], params: SamplingParams, state: State | None):
        self.model = model
        self.params = params
        self.prompt_ids = model.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self.state = state
        self.result: GenerationResult | None = None
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def __iter__(self) -> Iterator[str]:
        model, params = self.model, self.params
        tok = model.tokenizer
        vocab = model.spec.vocab_size
        sampler = Sampler(vocab, [params], no_penalty_ids=no_penalty_ids(tok, vocab), never=unusable_ids(tok, vocab))
        decoder, stops = StreamDecoder(tok), StopMatcher(params.stop)
        stop_tokens = set(params.stop_tokens)
        text: list[str] = []
        generated: list[int] = []
        t0 = time.perf_counter()
        if not self.prompt_ids:
            raise RWKVHubError("the prompt is empty: give at least one token of text")
        logits, state = model.forward(self.prompt_ids, self.state)
        t1 = time.perf_counter()
        reason = "length"
        while len(generated) < params.max_tokens:
            if self._cancel.is_set():
                reason = "cancelled"
                break
            token = sampler.sample(logits.unsqueeze(0))[0]
            if token in stop_tokens:
                reason = "stop"
                break
            generated.append(token)
            logits, state = model.forward(token, state)
            shown, stopped = stops.push(decoder.feed(token))
            if shown:
                text.append(shown)
                yield shown
            if stopped:
                reason = "stop"
                break
        if reason != "stop":
            shown, stopped = stops.push(decoder.flush())
            tail = shown if stopped else shown + stops.flush()
            reason = "stop" if stopped else reason
            if tail:
                text.append(tail)
                yield tail
        self.result = GenerationResult(
            "".join(text),
            reason,
            len(self.prompt_ids),
            len(generated),
            state,
            t1 - t0,
            time.perf_counter() - t1,
            generated,
        )
