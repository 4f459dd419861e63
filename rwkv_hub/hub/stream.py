"""A request's answer as text deltas: what `Hub.submit` and the other request calls return.

The stream runs the request's pending plugin code when first iterated, applies the stream filters (one
that fails is dropped and reported against its plugin), holds a completion to its block and strips the
answer's edges as the format's `read_answer` would, so the deltas add up to `text()`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.engine import RequestStats, Stream
from ..core.errors import RWKVHubError
from ..core.logprobs import TokenLogprob
from .completion import CompletionRules, cut
from .formats import StrippedDeltas
from .plugins import Calls, PluginTimeout

if TYPE_CHECKING:
    from .hub import Hub, _Plan

Filter = tuple[str, str, Callable[[str], str]]  # (plugin, name, filter)
Reader = tuple[str, str, Callable[[str], str]]  # (plugin, format, read_answer)


@dataclass
class Prepared:
    """A request whose plugin code has run: what the engine is given."""

    request: dict[str, Any]
    plan: _Plan
    params: Any  # SamplingParams
    filters: list[Filter]
    boundary: tuple[str, CompletionRules] | None = None


class _Unstarted:
    """What `HubStream.stream` is until the request reaches the engine: no deltas, no result."""

    result = None
    logprobs: tuple = ()

    def __init__(self) -> None:
        self.stats = RequestStats()

    def cancel(self) -> None:
        pass

    def __aiter__(self) -> _Unstarted:
        return self

    async def __anext__(self) -> str:
        raise StopAsyncIteration


class HubStream:
    """The answer of one request as text deltas (after its stream filters); `result`, `stats` and
    `cancel()` as `Stream`. `text()` is the whole answer, as the format's `read_answer` reads it.

    Deltas: for a format whose `read_answer` is `str.strip` (the default), leading whitespace is dropped and
    trailing whitespace is held back until more text follows, so the deltas add up to the answer; for any
    other `read_answer` they are the text as generated, and only `text()` is read.

    A completion's stream has a `boundary` (the prefix whose block it continues, and the rules): text past
    the first boundary is never yielded, and the generation is stopped there (`finish_reason` "stop").
    """

    def __init__(self, hub: Hub, request: dict[str, Any], answer: Reader | None):
        self.hub = hub
        self.request = request
        self.answer = answer  # None: the text as it is (editor completions)
        self.stream: Stream | _Unstarted = _Unstarted()
        self.filters: list[Filter] = []
        self.boundary: tuple[str, CompletionRules] | None = None
        self.cut = False
        self._pending: Callable[[Calls], Prepared] | None = None
        self._failed: BaseException | None = None
        self._cancelled = False
        self._scored = 0  # log probability entries handed out by `take_logprobs`

    @property
    def result(self):
        return self.stream.result

    @property
    def finish_reason(self) -> str:
        return "stop" if self.cut else self.stream.result.finish_reason

    @property
    def stats(self):
        return self.stream.stats

    def cancel(self) -> None:
        self._cancelled = True
        self.stream.cancel()

    def take_logprobs(self) -> list[TokenLogprob]:
        """With `logprobs` asked for: the entries of the tokens behind the deltas yielded since the last
        call (text held back or changed by filters brings its tokens with the next delta; after the last
        one, a final call returns what remains)."""
        got = list(self.stream.logprobs[self._scored :])
        self._scored += len(got)
        return got

    async def start(self) -> None:
        """Run the request's remaining plugin code off the event loop and queue it on the engine; raises what
        the request fails with (iterating calls it; an adapter may call it first to report errors early)."""
        if self._failed is not None:
            raise self._failed
        if self._pending is None:
            return
        job, self._pending = self._pending, None
        try:
            self.hub._launch(self, await self.hub.host.run_bounded(job))
        except BaseException as e:  # iterating again raises it again
            self._failed = e if isinstance(e, Exception) else RWKVHubError("the request was cancelled as it started")
            raise

    async def __aiter__(self) -> AsyncIterator[str]:
        await self.start()
        strip = StrippedDeltas() if self.answer is not None and self.answer[2] is str.strip else None
        text, sent = "", 0
        async for delta in self.stream:
            delta = self._filter(delta)
            if not delta or self.cut:  # after a cut: what the engine made before it saw the cancel
                continue
            if self.boundary is not None:
                text += delta
                kept, self.cut = cut(self.boundary[0], text, self.boundary[1])
                if self.cut:
                    self.stream.cancel()
                else:  # a new line that is only indentation so far may still turn out blank: hold it back
                    last = kept.rfind("\n")
                    if last != -1 and not kept[last:].strip():
                        kept = kept[:last]
                delta, sent = kept[sent:], max(sent, len(kept))
            if strip is not None:
                delta = strip.push(delta)
            if delta:
                yield delta

    def _filter(self, delta: str) -> str:
        """The stream filters, in order; one that raises or returns anything but text is dropped for this
        stream and reported against its plugin, and the delta goes on without it."""
        for f in list(self.filters):
            plugin, name, fn = f
            try:
                out = fn(delta)
                if not isinstance(out, str):
                    raise TypeError(f"returned {type(out).__name__}, not text")
            except Exception as e:  # the plugin's fault, not the request's
                self.filters.remove(f)
                self.hub.host.request_fault(plugin, f"stream filter {name!r}", e, "it was dropped for this request")
                continue
            delta = out
        return delta

    async def text(self) -> str:
        """The whole answer: `read_answer` of the text. A plugin's `read_answer` runs off the event loop; one
        that fails, or returns anything but text, is reported and the answer is the text as generated."""
        text = "".join([d async for d in self])
        if self.answer is None:
            return text
        plugin, fmt, read = self.answer
        if read is str.strip or self.hub.host.is_builtin(plugin):
            return read(text)
        stage = f"format {fmt!r} read_answer"
        try:
            then = "the answer is the text as generated"
            answer = await self.hub.host.run_bounded(lambda calls: calls(plugin, stage, read, text), then)
            if not isinstance(answer, str):
                raise TypeError(f"returned {type(answer).__name__}, not text")
        except PluginTimeout:  # reported already
            return text
        except Exception as e:  # the plugin's fault: the answer as generated
            self.hub.host.request_fault(plugin, stage, e, "the answer is the text as generated")
            return text
        return answer
