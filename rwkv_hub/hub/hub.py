"""The hub: turns a request (format, preset, parameters, input) into engine work, through the plugins.

One request, in order: the preset is looked up; the format is the request's, else the preset's, else
chat; the format renders the input into a prompt and stop strings; parameters are merged (request >
preset > format defaults > model defaults); every plugin's `prepare_request` may adjust the result; the
engine runs it; every plugin's `generation_finished` sees the outcome. The adapters (daemon, HTTP API)
call `Hub.submit`; the hub never imports them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from ..core.engine import Engine, Stream
from ..core.errors import RWKVHubError
from . import selection
from .completion import (
    MAX_TOKENS,
    CompletionContext,
    CompletionError,
    CompletionPrompt,
    CompletionRules,
    cut,
    rules_for,
)
from .formats import FormatInput
from .plugins import PluginHost
from .presets import check_params, resolve_params

REQUEST_FIELDS = (
    "interactive",
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


class HubStream:
    """Text deltas of one request after its stream filters; `result`, `stats` and `cancel()` as `Stream`.

    A completion's stream has a `boundary` (the prefix whose block it continues, and the rules): text past
    the first boundary is never yielded, and the generation is stopped there (`finish_reason` "stop").
    """

    def __init__(self, stream: Stream, filters: list[Callable[[str], str]], request: dict[str, Any]):
        self.stream = stream
        self.filters = filters
        self.request = request
        self.boundary: tuple[str, CompletionRules] | None = None
        self.cut = False

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
        self.stream.cancel()

    async def __aiter__(self) -> AsyncIterator[str]:
        text, sent = "", 0
        async for delta in self.stream:
            for f in self.filters:
                delta = f(delta)
            if not delta or self.cut:  # after a cut: what the engine made before it saw the cancel
                continue
            if self.boundary is None:
                yield delta
                continue
            text += delta
            kept, self.cut = cut(self.boundary[0], text, self.boundary[1])
            if self.cut:
                self.stream.cancel()
            else:  # a new line that is only indentation so far may still turn out blank: hold it back
                last = kept.rfind("\n")
                if last != -1 and not kept[last:].strip():
                    kept = kept[:last]
            if len(kept) > sent:
                yield kept[sent:]
                sent = len(kept)

    async def text(self) -> str:
        return "".join([d async for d in self])


class Hub:
    """Plugins plus an engine."""

    def __init__(self, engine: Engine, host: PluginHost):
        self.engine = engine
        self.host = host
        self._states: dict[str, Any] = {}

    def render(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The request as it would run: format, preset, merged params, prompt text and stop strings."""
        unknown = sorted(set(request) - set(REQUEST_FIELDS))
        if unknown:
            raise RequestError(f"unknown request field {unknown[0]!r}; fields are {', '.join(REQUEST_FIELDS)}")
        preset = self.host.preset(request["preset"]) if request.get("preset") else None
        fmt = self.host.format(request.get("format") or (preset.format if preset else None) or DEFAULT_FORMAT)
        data = dict(request.get("input") or {})
        sid = request.get("session")
        if sid is not None and self.engine.sessions is not None and sid in self.engine.sessions:
            data.setdefault("continuing", self.engine.sessions.get(sid).turns > 0)
        inp = FormatInput.from_dict(data)
        rendered = fmt.render(inp)
        params = resolve_params(fmt.defaults, preset, check_params("request", request.get("params") or {}))
        stops = params.get("stop", ())
        params["stop"] = tuple(rendered.stop) + ((stops,) if isinstance(stops, str) else tuple(stops))
        return {
            "format": fmt.name,
            "preset": preset.name if preset else None,
            "params": params,
            "input": data,
            "prompt": rendered.prompt,
            "session": sid,
        }

    def submit(self, request: Mapping[str, Any]) -> HubStream:
        """Render, let plugins prepare, and queue on the engine; errors are raised before anything runs."""
        from ..core.sampling import ParameterError, SamplingParams

        req = self.render(request)
        self.host.call("prepare_request", request=req)
        try:
            params = SamplingParams(**check_params("request", req["params"]))
        except (ParameterError, TypeError) as e:
            raise RequestError(str(e)) from None
        state = None
        if request.get("initial_state"):
            if req["session"] is not None:
                raise RequestError("initial_state starts a fresh conversation; a session already has its state")
            state = self.initial_state(request["initial_state"])
        processors = [self._named("logit_processors", n) for n in request.get("logit_processors") or ()]
        filters = [self._named("stream_filters", n)() for n in request.get("stream_filters") or ()]
        stream = self.engine.submit(
            req["prompt"],
            params,
            state=state,
            session=req["session"],
            logit_processors=processors,
            on_finish=lambda s: self._done(req, s),
            session_messages=_new_messages(req["input"]) if req["session"] is not None else (),
            interactive=bool(request.get("interactive")),
        )
        return HubStream(stream, filters, req)

    def complete(self, request: Mapping[str, Any]) -> HubStream:
        """An editor completion: the completion format (the request's `format`, else the one registered for
        its language, else `prefix`) builds the prompt; it runs ahead of chat work and ends at the block.

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
        try:
            built = fmt.build(ctx)
            if not isinstance(built, CompletionPrompt):
                raise TypeError(f"build returned {type(built).__name__}, not a CompletionPrompt")
        except CompletionError:
            raise
        except Exception as e:  # a plugin's format must not take the request's connection down
            raise CompletionError(f"completion format {fmt.name!r} failed: {type(e).__name__}: {e}") from None
        if not built.prompt:
            raise CompletionError("there is no text before the cursor to continue")
        params = {"max_tokens": MAX_TOKENS} | dict(built.params) | dict(request.get("params") or {})
        extra = params.get("stop", ())
        params["stop"] = list(built.stop) + ([extra] if isinstance(extra, str) else list(extra))
        req: dict[str, Any] = {"format": "raw", "input": {"text": built.prompt}, "params": params, "interactive": True}
        if request.get("preset"):
            req["preset"] = request["preset"]
        stream = self.submit(req)
        stream.boundary = (built.block_prefix, built.rules)
        return stream

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

    def _named(self, kind: str, name: str) -> Callable:
        table = getattr(self.host, kind)
        if name not in table:
            raise RequestError(
                f"unknown {kind[:-1].replace('_', ' ')} {name!r}; known: {', '.join(sorted(table)) or 'none'}"
            )
        return table[name]

    def _done(self, req: dict[str, Any], stream: Stream) -> None:
        r = stream.result
        result = {
            "text": r.text,
            "finish_reason": r.finish_reason,
            "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens},
            "timings": {"queue_s": stream.stats.queue_s, "prefill_s": r.prefill_s, "decode_s": r.decode_s},
        }
        self.host.call("generation_finished", request=req, result=result)


def _new_messages(inp: Mapping[str, Any]) -> list[dict[str, str]]:
    """What a turn adds to a session's transcript, for display: its messages, or its text as a user message."""
    if inp.get("messages"):
        return [{"role": m["role"], "content": m["content"]} for m in inp["messages"]]
    text = "\n\n".join(str(inp[k]) for k in ("instruction", "input", "text") if inp.get(k))
    return [{"role": "user", "content": text}] if text else []
