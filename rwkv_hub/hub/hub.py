"""The hub: turns a request (format, preset, parameters, input) into engine work, through the plugins.

One request, in order: the preset is looked up; the format is the request's, else the preset's, else
chat; the format renders the input into a prompt and stop strings; parameters are merged (request >
preset > format defaults > model defaults); every plugin's `prepare_request` may adjust the result; the
engine runs it; every plugin's `generation_finished` sees the outcome; the format's `read_answer` reads
the answer. The adapters (daemon, HTTP API) call `Hub.submit`; the hub never imports them.

What the hub can check itself (fields, names, parameter types and ranges) is checked by `submit` at once.
Plugin code that runs for the request (a format's render, `prepare_request`, a completion format's build,
a stream filter's factory) runs then too when it is all built in; otherwise it runs in a thread of its own
with a time bound when the stream is first iterated (`HubStream.start()`), so that a slow plugin cannot
stall the daemon's event loop, and its errors are raised from there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.engine import Engine, Stream
from ..core.errors import RWKVHubError
from ..core.logprobs import check_count
from . import selection
from .completion import (
    MAX_TOKENS,
    CompletionContext,
    CompletionError,
    CompletionFormat,
    CompletionPrompt,
    rules_for,
)
from .formats import FormatFailed, FormatInput, PromptFormat, render_with
from .plugins import Calls, PluginHost
from .presets import Preset, check_params, resolve_params, sampling
from .stream import HubStream, Prepared, Reader

REQUEST_FIELDS = (
    "interactive",
    "logprobs",
    "format",
    "preset",
    "params",
    "input",
    "session",
    "initial_state",
    "logit_processors",
    "stream_filters",
)
DEFAULT_FORMAT = "chat"


class RequestError(RWKVHubError):
    """A request names something unknown or has fields of the wrong kind."""


@dataclass
class _Plan:
    """A request as `submit` checked it, before any plugin code has run."""

    fmt: PromptFormat
    owner: str  # the plugin whose format it is
    preset: Preset | None
    inp: FormatInput
    data: dict[str, Any]  # the input as given, with `continuing`
    params: dict[str, Any]  # merged, without the format's stop strings
    session: str | None
    state: Any = None
    processors: tuple[Callable, ...] = ()
    filters: tuple[tuple[str, str, Callable[[], Callable[[str], str]]], ...] = ()  # (plugin, name, make_filter)
    interactive: bool = False
    logprobs: int | None = None  # alternatives reported with each generated token; None: none


class Hub:
    """Plugins plus an engine."""

    def __init__(self, engine: Engine, host: PluginHost):
        self.engine = engine
        self.host = host
        self._states: dict[str, Any] = {}

    def render(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The request as it would run, before `prepare_request`: format, preset, merged params, prompt text
        and stop strings."""
        return self._rendered(self._plan(request), Calls())

    def submit(self, request: Mapping[str, Any]) -> HubStream:
        """Check, render, let plugins prepare, and queue on the engine. What the hub checks itself is raised
        here; plugin code that is not built in runs, and fails, when the stream is first iterated."""
        plan = self._plan(request)
        owners = [plan.owner, *(p for p, _, _ in plan.filters)]
        answer = (plan.owner, plan.fmt.name, plan.fmt.read_answer)
        return self._stream(self._preview(plan), answer, owners, lambda calls: self._prepare(plan, calls))

    def complete(self, request: Mapping[str, Any]) -> HubStream:
        """An editor completion: the completion format (the request's `format`, else the one registered for
        its language, else `prefix`) builds the prompt; it runs ahead of chat work and ends at the block.
        Its text is kept as generated (no `read_answer`): ghost text needs its leading space.

        `request` has `prefix` and optionally `suffix`, `language`, `path`, `max_lines`, `format`,
        `preset` and `params`, as the WebSocket protocol's `complete` message.
        """
        language = request.get("language")
        ctx = CompletionContext(
            request["prefix"],
            request.get("suffix") or "",
            language,
            request.get("path"),
            rules_for(language, request.get("max_lines")),
        )
        fmt = self.host.completion_format(request.get("format"), language)
        owner = self.host.owner("completion_formats", fmt.name)

        def job(calls: Calls) -> Prepared:
            built = self._build(fmt, owner, ctx, calls)
            params = {"max_tokens": MAX_TOKENS} | dict(built.params) | dict(request.get("params") or {})
            extra = params.get("stop", ())
            params["stop"] = list(built.stop) + ([extra] if isinstance(extra, str) else list(extra))
            req: dict[str, Any] = {"format": "raw", "input": {"text": built.prompt}, "params": params}
            if request.get("preset"):
                req["preset"] = request["preset"]
            ready = self._prepare(self._plan(req | {"interactive": True}), calls)
            ready.boundary = (built.block_prefix, built.rules)
            return ready

        preview = {"format": "raw", "preset": request.get("preset"), "params": {}, "input": {}, "session": None}
        return self._stream(preview, None, [owner, self.host.owner("formats", "raw")], job)

    def selection(self, request: Mapping[str, Any]) -> HubStream:
        """A command on an editor's selection (rewrite, explain, docstring, translate): an instruction
        request that runs ahead of chat work. Fields as the protocol's `selection` message."""
        return self.submit(selection.request(request) | {"interactive": True})

    def compose(self, request: Mapping[str, Any]) -> HubStream:
        """A piece of music in the `abc` or `midi` format: `continue` is the start of a tune (ABC text or MIDI
        event text; none: a new piece), sampled with the format's music preset unless `preset` says
        otherwise. The stream's text is what the model adds; `music.piece_text` joins it to the start."""
        from .music import FORMATS, event_words

        fmt = request.get("format")
        if fmt not in FORMATS:
            raise RequestError(f"compose needs format 'abc' or 'midi', not {fmt!r}")
        vocabulary = getattr(self.engine.model.tokenizer, "name", "")
        if (fmt == "midi") != (vocabulary == "midi"):
            needs = "a MIDI model (event words: tokenizer-midi.json)" if fmt == "midi" else "an ABC (character) model"
            raise RequestError(
                f"compose format {fmt!r} needs {needs}; this daemon's model reads {vocabulary or 'other'} tokens: "
                f"use format {'abc' if fmt == 'midi' else 'midi'} or serve a {fmt.upper()} model"
            )
        start = request.get("continue") or ""
        if fmt == "midi":
            start = " ".join(event_words(start))
        req: dict[str, Any] = {
            "format": fmt,
            "preset": request.get("preset") or f"music-{fmt}",
            "input": {"text": start},
            "params": {"max_tokens": 1000} | dict(request.get("params") or {}),
        }
        if fmt == "midi" and "midi-end-nudge" in self.host.logit_processors:
            req["logit_processors"] = ["midi-end-nudge"]
        stream = self.submit(req)
        stream.request["start"] = start
        return stream

    def initial_state(self, name: str):
        """A registered state-tuning file, read on first use and kept."""
        from ..core.sessions import load_tuned_state

        if name not in self._states:
            entry = self._named("initial_states", name)
            self._states[name] = load_tuned_state(entry.path, self.engine.model.state_shape)
        return self._states[name]

    # --- the steps of a request ---------------------------------------------------------------------------------

    def _plan(self, request: Mapping[str, Any]) -> _Plan:
        """Every check that needs no plugin code: fields and their kinds, names, parameter types and ranges."""
        unknown = sorted(set(request) - set(REQUEST_FIELDS))
        if unknown:
            raise RequestError(f"unknown request field {unknown[0]!r}; fields are {', '.join(REQUEST_FIELDS)}")
        preset = self.host.preset(request["preset"]) if request.get("preset") not in (None, "") else None
        name = request.get("format")
        fmt = self.host.format(name if name not in (None, "") else (preset.format if preset else DEFAULT_FORMAT))
        data = request.get("input")
        if data is not None and not isinstance(data, Mapping):
            raise RequestError(f"input must be an object of input fields, not {type(data).__name__}")
        data = dict(data or {})
        sid = request.get("session")
        if sid is not None and not isinstance(sid, str):
            raise RequestError(f"session must be a session id (text), not {type(sid).__name__}")
        if sid is not None and self.engine.sessions is not None and sid in self.engine.sessions:
            data.setdefault("continuing", self.engine.sessions.get(sid).turns > 0)
        inp = FormatInput.from_dict(data)
        params = resolve_params(fmt.defaults, preset, check_params("request", request.get("params") or {}))
        _sampling(params)  # ranges, before any plugin code runs
        state = None
        if request.get("initial_state"):
            if sid is not None:
                raise RequestError("initial_state starts a fresh conversation; a session already has its state")
            state = self.initial_state(_name("initial_state", request["initial_state"]))
        processors = tuple(self._named("logit_processors", n) for n in _names(request, "logit_processors"))
        filters = tuple(
            (self.host.owner("stream_filters", n), n, self._named("stream_filters", n))
            for n in _names(request, "stream_filters")
        )
        owner = self.host.owner("formats", fmt.name)
        interactive = bool(request.get("interactive"))
        logprobs = check_count(request.get("logprobs"))
        return _Plan(fmt, owner, preset, inp, data, params, sid, state, processors, filters, interactive, logprobs)

    def _rendered(self, plan: _Plan, calls: Calls) -> dict[str, Any]:
        """The request with its prompt: the format renders; a failure of its code is reported against its
        plugin and fails the request with a FormatError naming both."""
        try:
            rendered = calls(
                plan.owner, f"format {plan.fmt.name!r} render", render_with, plan.fmt, plan.inp, plan.owner
            )
        except FormatFailed as e:
            self.host.request_fault(plan.owner, f"format {plan.fmt.name!r} render", e.__cause__, "the request failed")
            raise
        params = dict(plan.params)
        stops = params.get("stop", ())
        params["stop"] = tuple(rendered.stop) + ((stops,) if isinstance(stops, str) else tuple(stops))
        _sampling(params)  # the format's stop strings count too
        prompt = rendered.prompt
        sessions = self.engine.sessions
        if plan.inp.continuing and sessions is not None and plan.session in sessions:
            prompt = missing_turn_end(sessions.get(plan.session).tail, rendered.stop) + prompt
        return self._preview(plan) | {"params": params, "prompt": prompt}

    def _prepare(self, plan: _Plan, calls: Calls) -> Prepared:
        """Render, let every plugin's `prepare_request` adjust (each on a copy, checked), make the filters."""
        req = self.host.prepare(self._rendered(plan, calls), _check_prepared, calls)
        filters = []
        for plugin, name, make in plan.filters:
            stage = f"stream filter {name!r}"
            try:
                fn = calls(plugin, stage, make)
                if not callable(fn):
                    raise TypeError(f"make_filter returned {type(fn).__name__}, not a function")
            except Exception as e:  # the plugin's fault, not the request's
                self.host.request_fault(plugin, stage, e, "it was dropped for this request")
                continue
            filters.append((plugin, name, fn))
        return Prepared(req, plan, _sampling(req["params"]), filters)

    def _build(self, fmt: CompletionFormat, owner: str, ctx: CompletionContext, calls: Calls) -> CompletionPrompt:
        stage = f"completion format {fmt.name!r} build"
        try:
            built = calls(owner, stage, fmt.build, ctx)
            if not isinstance(built, CompletionPrompt):
                raise TypeError(f"build returned {type(built).__name__}, not a CompletionPrompt")
        except CompletionError:
            raise
        except Exception as e:  # a plugin's format must not take the request's connection down
            self.host.request_fault(owner, stage, e, "the request failed")
            raise CompletionError(
                f"completion format {fmt.name!r} failed: {type(e).__name__}: {e} (plugin {owner})"
            ) from None
        if not built.prompt:
            raise CompletionError("there is no text before the cursor to continue")
        return built

    def _stream(
        self,
        preview: dict[str, Any],
        answer: Reader | None,
        owners: list[str],
        job: Callable[[Calls], Prepared],
    ) -> HubStream:
        """A stream for `job`: run now when all its plugin code is built in, else when first iterated."""
        stream = HubStream(self, preview, answer)
        owners = owners + self.host.hook_plugins("prepare_request")
        if all(self.host.is_builtin(p) for p in owners):
            self._launch(stream, job(Calls()))
        else:
            stream._pending = job
        return stream

    def _launch(self, stream: HubStream, ready: Prepared) -> None:
        req, plan = ready.request, ready.plan
        stream.stream = self.engine.submit(
            req["prompt"],
            ready.params,
            state=plan.state,
            session=req["session"],
            logit_processors=list(plan.processors),
            on_finish=lambda s: self._done(req, s),
            session_messages=_new_messages(req["input"]) if req["session"] is not None else (),
            interactive=plan.interactive,
            logprobs=plan.logprobs,
        )
        stream.request.update(req)
        stream.filters, stream.boundary = ready.filters, ready.boundary
        if stream._cancelled:
            stream.stream.cancel()

    def _preview(self, plan: _Plan) -> dict[str, Any]:
        return {
            "format": plan.fmt.name,
            "preset": plan.preset.name if plan.preset else None,
            "params": dict(plan.params),
            "input": plan.data,
            "session": plan.session,
            "logprobs": plan.logprobs,
        }

    def _named(self, kind: str, name: str) -> Callable:
        table = getattr(self.host, kind)
        if name not in table:
            raise RequestError(
                f"unknown {kind[:-1].replace('_', ' ')} {name!r}; known: {', '.join(sorted(table)) or 'none'}"
            )
        return table[name]

    def _done(self, req: dict[str, Any], stream: Stream) -> None:
        """`generation_finished`, in a thread of its own so that a slow observer cannot stall the loop."""
        if not self.host.hook_plugins("generation_finished"):
            return
        r = stream.result
        result = {
            "text": r.text,
            "finish_reason": r.finish_reason,
            "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens},
            "timings": {"queue_s": stream.stats.queue_s, "prefill_s": r.prefill_s, "decode_s": r.decode_s},
        }
        kwargs = {"request": req, "result": result}
        threading.Thread(target=self.host.call, args=("generation_finished",), kwargs=kwargs, daemon=True).start()


def _sampling(params: Mapping[str, Any]):
    """SamplingParams of merged parameters; an out-of-range value is the request's error."""
    from ..core.sampling import ParameterError, SamplingParams

    try:
        return SamplingParams(**params)
    except (ParameterError, TypeError) as e:
        raise RequestError(str(e)) from None


def _check_prepared(req: dict[str, Any]) -> None:
    """What a `prepare_request` hook leaves must still run: a prompt of text, a session id or none, input
    a format could read, and sampling parameters of known names, types and ranges."""
    prompt = req.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise TypeError(f"prepare_request left the prompt {type(prompt).__name__} {prompt!r:.40}; it must be text")
    if req.get("session") is not None and not isinstance(req["session"], str):
        raise TypeError("prepare_request left a session that is not a session id (text)")
    if not isinstance(req.get("input"), Mapping):
        raise TypeError("prepare_request left input that is not an object")
    FormatInput.from_dict(req["input"])
    sampling("prepare_request left params", req.get("params"))


def _name(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RequestError(f"{field} must be a name (text), not {type(value).__name__}")
    return value


def _names(request: Mapping[str, Any], field: str) -> list[str]:
    value = request.get(field) or ()
    if not isinstance(value, list | tuple):
        raise RequestError(f"{field} must be a list of names, not {type(value).__name__}")
    return [_name(f"{field}[{i}]", v) for i, v in enumerate(value)]


def _new_messages(inp: Mapping[str, Any]) -> list[dict[str, str]]:
    """What a turn adds to a session's transcript, for display: its messages, or its text as a user message."""
    if inp.get("messages"):
        return [{"role": m["role"], "content": m["content"]} for m in inp["messages"]]
    text = "\n\n".join(str(inp[k]) for k in ("instruction", "input", "text") if inp.get(k))
    return [{"role": "user", "content": text}] if text else []


def missing_turn_end(tail: str | None, stops: Sequence[str]) -> str:
    """What the session's state lacks of the format's turn end (its first stop string): a reply cut short
    by max_tokens, cancelled, or ended by another stop did not read it, and the next turn would be glued
    onto it. Empty when the state read a turn end last, or when what it read is not known."""
    if tail is None or not stops or not stops[0] or any(s and tail.endswith(s) for s in stops):
        return ""
    end = stops[0]
    return next((end[k:] for k in range(len(end) - 1, 0, -1) if tail.endswith(end[:k])), end)
