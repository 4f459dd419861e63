"""The engine: one model, many concurrent streams, one batched forward pass per step.

Requests arrive from an asyncio event loop and stream text deltas back as async iterators; the model
work runs in one worker thread, so the loop never blocks. Each step of the worker feeds every decoding
stream its last sampled token and, within a token budget, the next chunk of waiting prompts, all in one
`forward_batch` call: a long prompt is read a chunk per step while the other streams keep getting a
token per step.

Chunks are cut at fixed positions of each prompt (multiples of `prefill_chunk`), never by what else is
running, so a stream computes the same numbers alone or in company; each stream samples with its own
generator, so a seeded request gives the same text either way. Prompts start from the longest prefix
the `PrefixCache` holds; states are stored there at every `cache_interval` tokens of a prompt, at its end,
and at the end of the generation. An interactive prompt (an editor's completion) also gets a state
`EDIT_TAIL` tokens before its end: the next keystroke changes the last token or two, so the next request
shares all of the prompt but its tail, and starts from there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .errors import RWKVHubError
from .generate import GenerationResult, StopMatcher
from .limits import EngineLimits
from .logprobs import TokenLogprob, check_count, entries
from .prefix_cache import PrefixCache, prefix_hashes
from .sampling import Sampler, SamplingParams, no_penalty_ids, unusable_ids
from .sessions import Session, SessionStore
from .state import State
from .tokenizer import StreamDecoder

EDIT_TAIL = 16  # tokens before an interactive prompt's end where its state is also cached
SESSION_TAIL_TOKENS = 8  # tokens whose text a session keeps as what its state read last (Session.tail)
log = logging.getLogger("rwkv_hub")


class EngineBusy(RWKVHubError):
    """Every stream slot and queue place is taken; try again later."""


class RequestTooLong(RWKVHubError):
    """The prompt or max_tokens is over the engine's limit."""


@dataclass
class RequestStats:
    queue_s: float = 0.0  # submitted -> first step
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache instead of prefilled
    prefill_s: float = 0.0  # first step -> first token sampled
    first_token_s: float | None = None  # submitted -> first token sampled
    completion_tokens: int = 0
    decode_s: float = 0.0
    token_times: list[float] = field(default_factory=list)  # perf_counter() when each token was sampled

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.decode_s if self.decode_s > 0 else 0.0


_END = object()


class Stream:
    """One request's text deltas: `async for delta in stream`. Afterwards `result` and `stats` are set.

    `cancel()` ends it at the engine's next step (finish reason "cancelled"); leaving the `async for`
    early does not, so call it when the client goes away.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self._cancelled = threading.Event()
        self._on_finish: Callable[[Stream], None] | None = None
        self.result: GenerationResult | None = None
        self.stats = RequestStats()
        self.logprobs: list[TokenLogprob] = []  # with `logprobs` asked for: an entry per token of the deltas so far

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> str:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # iterating again ends at once
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        text, scored = item
        self.logprobs.extend(scored)
        return text

    async def text(self) -> str:
        """Wait for the whole text."""
        return "".join([d async for d in self])

    def _notify_finished(self) -> None:
        if self._on_finish is not None:
            try:
                self._loop.call_soon_threadsafe(self._on_finish, self)
            except RuntimeError:  # the loop is closed
                pass

    def _push(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._cancelled.set()


@dataclass(eq=False)  # jobs are compared by identity
class _Job:
    stream: Stream
    ids: list[int]
    params: SamplingParams
    state: State | None
    submitted: float
    pos: int = 0  # prompt tokens read
    slot: int = -1
    hashes: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    pending_token: int | None = None  # sampled, not yet fed
    finishing: str | None = None  # the finish reason, once decided; the last token is fed first
    started: float = 0.0
    first_token: float = 0.0
    decoder: StreamDecoder | None = None
    stops: StopMatcher | None = None
    session: Session | None = None
    processors: list[Callable] = field(default_factory=list)
    row: int = -1  # while `state` is None, the job's state is this row of the engine's batched state
    messages: list[dict] = field(default_factory=list)  # for the session's transcript
    interactive: bool = False
    mark: int = -1  # a prompt position whose state is cached besides the fixed ones (interactive prompts)
    logprobs: int | None = None  # alternatives reported with each token; None: no log probabilities
    scored: list[TokenLogprob] = field(default_factory=list)  # entries whose text is not shown yet
    chars: int = 0  # characters of generated text decoded so far
    shown: int = 0  # characters of it sent as deltas


class Engine:
    """Owns a loaded model and runs every request through one batched loop in a worker thread.

    Use `async with Engine(model) as engine:` (or `start()` / `await stop()`), then
    `stream = engine.submit(prompt, params)` from the event loop's thread.
    """

    def __init__(
        self,
        model,
        limits: EngineLimits | None = None,
        cache: PrefixCache | None = None,
        sessions: SessionStore | None = None,
    ):
        self.model = model
        self.limits = limits or EngineLimits()
        self.cache = cache
        self.sessions = sessions
        self._sampler = Sampler(
            model.spec.vocab_size,
            [],
            no_penalty_ids=no_penalty_ids(model.tokenizer, model.spec.vocab_size),
            never=unusable_ids(model.tokenizer, model.spec.vocab_size),
        )
        self._free_slots: list[int] = []
        self._queue: deque[_Job] = deque()
        self._active: list[_Job] = []
        self._wake = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        # The last step's output state for all its jobs, kept batched: when the next step has the same
        # jobs (the usual decode step) it goes straight back in, without gathering per-job states.
        self._batch: State | None = None
        self._batch_jobs: list[_Job] = []
        self.steps = 0

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self, thread: bool = True) -> None:
        """Start taking requests; the model work runs in a new worker thread, or (thread=False) in whichever
        thread then calls `run()`.

        Run it in the thread that loaded the model where you can (the daemon does): on CPUs, torch's
        OpenMP threads serve the first thread that used them best, and a decode step from another
        thread was measured 1.3-1.5x slower on this machine (docs/engine.md).
        """
        if self._running:
            return
        self._running = True
        if thread:
            self._thread = threading.Thread(target=self._run, name="rwkv-hub-engine", daemon=True)
            self._thread.start()

    def run(self) -> None:
        """The worker loop, in the calling thread, until `request_stop()` (after `start(thread=False)`)."""
        self._run()

    def request_stop(self) -> None:
        """Cancel everything and make the worker loop end (safe from any thread or a signal handler)."""
        with self._wake:
            self._running = False
            for job in [*self._queue, *self._active]:
                job.stream.cancel()
            self._wake.notify()

    async def stop(self) -> None:
        """Cancel everything and wait for the worker thread to end."""
        self.request_stop()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None

    async def __aenter__(self) -> Engine:
        self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def queued(self) -> int:
        return len(self._queue)

    # --- requests --------------------------------------------------------------------------------------

    def submit(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        state: State | None = None,
        session: str | None = None,
        logit_processors: Sequence[Callable[[list[int], torch.Tensor], torch.Tensor]] = (),
        on_finish: Callable[[Stream], None] | None = None,
        session_messages: Sequence[dict] = (),
        interactive: bool = False,
        logprobs: int | None = None,
    ) -> Stream:
        """Queue a request; raises EngineBusy, RequestTooLong or SessionError at once when it cannot be taken.

        `state` continues a conversation (its prompt is then only the new tokens); `session` names a
        session of `sessions` to continue and to update when the request ends (also when cancelled: the
        state then holds the text that was shown). Without either, the prompt starts from the longest
        cached prefix. `logit_processors` (each `fn(generated_tokens, logits) -> logits`) run in order on
        this stream's logits before each sample; `on_finish(stream)` is called in the event loop's thread
        once the stream has ended (result set). `session_messages` (the turn's new messages) go into the
        session's transcript, followed by the reply. `interactive` requests (editor completions, typed
        as the user waits) are queued ahead of the others when all slots are taken. `logprobs` (0-20)
        reports each generated token's log probability with that many alternatives: `stream.logprobs` holds
        the entries of the tokens whose text the deltas so far have shown.
        """
        if not self._running:
            raise RWKVHubError("the engine is not running")
        params = params or SamplingParams()
        ids = self.model.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        lim = self.limits
        if not ids:
            raise RWKVHubError("the prompt is empty: give at least one token of text")
        if len(ids) > lim.max_prompt_tokens:
            raise RequestTooLong(f"the prompt has {len(ids)} tokens; this engine takes at most {lim.max_prompt_tokens}")
        if params.max_tokens > lim.max_new_tokens:
            raise RequestTooLong(f"max_tokens is {params.max_tokens}; this engine allows at most {lim.max_new_tokens}")
        vocab = self.model.spec.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise RWKVHubError(f"token id {bad} is outside the vocabulary 0..{vocab - 1}")
        params.check_vocabulary(vocab)
        logprobs = check_count(logprobs)
        if state is not None and state.batch_size != 1:
            raise RWKVHubError(f"a request continues one sequence, but the state holds {state.batch_size}")
        if state is not None and state.shape != self.model.state_shape:
            raise RWKVHubError(f"the state is for a model with {state.shape}, not {self.model.state_shape}")
        if session is not None and state is not None:
            raise RWKVHubError("give a session or a state, not both")
        if session is not None and self.sessions is None:
            raise RWKVHubError("this engine keeps no sessions")
        stream = Stream(asyncio.get_running_loop())
        job = _Job(stream, ids, params, state, time.perf_counter())
        job.processors, stream._on_finish = list(logit_processors), on_finish
        job.messages = [dict(m) for m in session_messages]
        job.interactive, job.logprobs = interactive, logprobs
        if interactive and len(ids) > EDIT_TAIL:
            job.mark = len(ids) - EDIT_TAIL
        with self._wake:
            if len(self._queue) + len(self._active) >= lim.max_active + lim.max_queue:
                raise EngineBusy(
                    f"the engine is busy: {len(self._active) + len(self._queue)} requests running or waiting, the"
                    f" most it takes (limits.max_active {lim.max_active} + limits.max_queue {lim.max_queue});"
                    " try again shortly"
                )
            if session is not None:
                job.session = self.sessions.acquire(session)
                job.state = job.session.state
            if interactive:  # after other interactive ones, ahead of chat and bot work
                ahead = sum(1 for j in self._queue if j.interactive)
                self._queue.insert(ahead, job)
            else:
                self._queue.append(job)
            self._wake.notify()
        return stream

    # --- the worker --------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._running and not self._queue and not self._active:
                    self._wake.wait(0.5)  # a timeout, so that signal handlers run when this is the main thread
                if not self._running:
                    break
                while self._queue and len(self._active) < self.limits.max_active:
                    self._admit(self._queue.popleft())
            try:
                self._step()
            except Exception as exc:  # a failure of the model fails the requests in this step, not the engine
                for job in list(self._active):
                    self._fail(job, exc)
        for job in [*self._active, *self._queue]:
            self._finish(job, "cancelled")
        self._active.clear()
        self._queue.clear()

    def _admit(self, job: _Job) -> None:
        job.started = time.perf_counter()
        job.stream.stats.queue_s = job.started - job.submitted
        job.stream.stats.prompt_tokens = len(job.ids)
        if job.state is None and self.cache is not None:
            job.hashes = prefix_hashes(job.ids)
            n, cached = self.cache.lookup(job.ids, job.hashes)
            if cached is not None:
                job.pos, job.state = n, cached.to(self.model.device)
                job.stream.stats.cached_tokens = n
        if job.state is None:
            job.state = self.model.new_state()
        elif job.state.device != self.model.device:  # sessions and the cache keep states on the CPU
            job.state = job.state.to(self.model.device)
        if self._free_slots:
            job.slot = self._free_slots.pop()
            self._sampler.reset(job.slot, job.params)
        else:
            job.slot = self._sampler.add(job.params)
        tok = self.model.tokenizer
        job.decoder, job.stops = StreamDecoder(tok), StopMatcher(job.params.stop)
        self._active.append(job)

    def _step(self) -> None:
        for job in list(self._active):
            if job.stream.cancelled and job.finishing is None:
                if job.pending_token is None:  # still reading its prompt: end now
                    self._finish(job, "cancelled")
                else:  # feed the token already shown, so the state has read all of the text, then end
                    job.finishing = "cancelled"
        lists, jobs = [], []
        budget = self.limits.prefill_budget
        chunk = self.limits.prefill_chunk
        for job in self._active:
            if job.pos < len(job.ids):
                end = min(len(job.ids), (job.pos // chunk + 1) * chunk)
                if job.pos < job.mark < end:
                    end = job.mark
                if end - job.pos > budget:
                    continue
                budget -= end - job.pos
                lists.append(job.ids[job.pos : end])
            else:
                lists.append([job.pending_token])
            jobs.append(job)
        if not jobs:
            return
        if len(jobs) == len(self._batch_jobs) and all(a is b for a, b in zip(jobs, self._batch_jobs, strict=True)):
            state_in = self._batch
        else:
            self._release_batch()
            state_in = jobs[0].state if len(jobs) == 1 else State.stack([j.state for j in jobs])
        logits, self._batch = self.model.forward_batch(lists, state_in)
        self._batch_jobs = list(jobs)
        self.steps += 1
        rows = []
        for i, job in enumerate(jobs):
            job.state, job.row = None, i
            if job.pos < len(job.ids):
                job.pos += len(lists[i])
                self._cache_prompt_state(job)
                if job.pos < len(job.ids):
                    continue
            elif job.finishing is not None:  # the last generated token is now read: done
                self._finish(job, job.finishing)
                continue
            rows.append(i)
        if not rows:
            return
        batch = logits[rows]
        for r, i in enumerate(rows):
            for fn in jobs[i].processors:
                batch[r] = self._processed(jobs[i], fn, batch[r])
        picked = self._sampler.sample(batch, [jobs[i].slot for i in rows])
        now = time.perf_counter()
        scored = [r for r, i in enumerate(rows) if jobs[i].logprobs is not None]
        lps: dict[int, TokenLogprob] = {}
        if scored:  # from the model's logits, before the processors and the sampler's changes
            got = entries(
                logits[[rows[r] for r in scored]],
                [picked[r] for r in scored],
                [jobs[rows[r]].logprobs for r in scored],
                self._token_bytes,
            )
            lps = {rows[r]: e for r, e in zip(scored, got, strict=True)}
        for i, token in zip(rows, picked, strict=True):
            self._take(jobs[i], token, now, lps.get(i))

    def _token_bytes(self, token: int) -> bytes:
        return self.model.tokenizer.decode_bytes([token])

    def _release_batch(self) -> None:
        """Give every job of the last batch its own state again (row views: nothing is copied)."""
        for job in self._batch_jobs:
            if job.state is None:
                job.state = self._batch.select(job.row)
        self._batch, self._batch_jobs = None, []

    def _state(self, job: _Job) -> State:
        return job.state if job.state is not None else self._batch.select(job.row)

    def _processed(self, job: _Job, fn: Callable, row: torch.Tensor) -> torch.Tensor:
        """A logit processor's output, checked: a processor that fails or returns junk is dropped for
        this request (its fault is logged), and the logits go on unchanged."""
        try:
            out = fn(list(job.generated), row.clone())
            if not isinstance(out, torch.Tensor) or out.shape != row.shape:
                raise TypeError(f"returned {type(out).__name__} instead of logits of shape {tuple(row.shape)}")
            return out.to(row.dtype)
        except Exception as e:  # a plugin's processor must not take the engine down
            log.warning(
                "logit processor %s failed and was dropped for this request: %s", getattr(fn, "__name__", fn), e
            )
            job.processors.remove(fn)
            return row

    def _cache_prompt_state(self, job: _Job) -> None:
        if self.cache is None or not job.hashes:
            return
        if job.pos in (len(job.ids), job.mark) or job.pos % self.limits.cache_interval == 0:
            self.cache.store(job.ids[: job.pos], _own(self._state(job)), job.hashes)

    def _take(self, job: _Job, token: int, now: float, scored: TokenLogprob | None = None) -> None:
        """Handle a sampled token: stop token, text delta, stop strings, max_tokens."""
        if not job.generated:
            job.first_token = now
            job.stream.stats.first_token_s = now - job.submitted
            job.stream.stats.prefill_s = now - job.started
        if token in job.params.stop_tokens:
            self._finish(job, "stop")  # a stop token is neither kept nor fed
            return
        job.stream.stats.token_times.append(now)
        job.generated.append(token)
        job.pending_token = token
        if scored is not None:
            job.scored.append(dataclasses.replace(scored, offset=job.chars))
        decoded = job.decoder.feed(token)
        job.chars += len(decoded)
        shown, stopped = job.stops.push(decoded)
        if shown:
            self._show(job, shown)
        if stopped:
            job.finishing = "stop"
        elif len(job.generated) >= job.params.max_tokens:
            job.finishing = "length"

    def _show(self, job: _Job, text: str) -> None:
        """Send a text delta, with the entries of the tokens whose text begins in what is now shown (a token
        wholly inside a stop string is never shown, and never reported)."""
        job.text.append(text)
        job.shown += len(text)
        ready = 0
        while ready < len(job.scored) and job.scored[ready].offset < job.shown:
            ready += 1
        sent, job.scored = tuple(job.scored[:ready]), job.scored[ready:]
        job.stream._push((text, sent))

    def _finish(self, job: _Job, reason: str) -> None:
        if job.state is None and job.row >= 0:
            job.state = self._state(job).copy()  # its own tensors, not a view that keeps the whole batch alive
        if job in self._active:
            self._active.remove(job)
            self._free_slots.append(job.slot)
        if reason != "stop" and job.decoder is not None:
            shown, stopped = job.stops.push(job.decoder.flush())
            tail = shown if stopped else shown + job.stops.flush()
            reason = "stop" if stopped else reason
            if tail:
                self._show(job, tail)
        end = time.perf_counter()
        stats = job.stream.stats
        stats.completion_tokens = len(job.generated)
        stats.decode_s = end - job.first_token if job.generated else 0.0
        if self.cache is not None and job.hashes and job.generated and reason != "cancelled":
            # A job that generated and was not cancelled finishes right after a step, so its state is the
            # compact copy made above; on a GPU it still has to come to the CPU.
            self.cache.store(job.ids + job.generated, job.state.to("cpu"))
        if job.session is not None:  # keep the turn only if the whole prompt was read
            whole = job.state is not None and job.pos == len(job.ids)
            turn = [*job.messages, {"role": "assistant", "content": "".join(job.text)}]
            read = (job.ids + job.generated)[-SESSION_TAIL_TOKENS:]  # every generated token has been fed
            tail = self.model.tokenizer.decode_bytes(read).decode("utf-8", "replace")
            self.sessions.release(
                job.session, job.state if whole else None, len(job.ids) + len(job.generated), turn, tail
            )
        job.stream.result = GenerationResult(
            "".join(job.text),
            reason,
            len(job.ids),
            len(job.generated),
            job.state,
            stats.prefill_s,
            stats.decode_s,
            list(job.generated),
        )
        job.stream._push(_END)
        job.stream._notify_finished()

    def _fail(self, job: _Job, exc: Exception) -> None:
        if job in self._active:
            self._active.remove(job)
            self._free_slots.append(job.slot)
        if job.session is not None:
            self.sessions.release(job.session)
        err = exc if isinstance(exc, RWKVHubError) else RWKVHubError(f"the model failed on this request: {exc}")
        job.stream._push(err)


def _own(state: State) -> State:
    """A compact CPU copy: a row of a batched state is a view that would keep the whole batch alive."""
    return state.to("cpu") if state.device.type != "cpu" else state.copy()
