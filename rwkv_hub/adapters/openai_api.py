"""OpenAI-compatible routes: `/v1/models`, `/v1/models/{id}`, `/v1/completions`, `/v1/chat/completions`.

Requests are read the way OpenAI's API reads them (model, prompt or messages, max_tokens, temperature,
top_p, stop, presence and frequency penalties, seed, stream, stream_options, echo); RWKV's extras ride
along as extra fields (`penalty_decay`, `top_k`, `preset`, `format`). Fields are checked here, at the
boundary, so a bad one is a 400 naming it (`param`), never a 500. Chat messages are rendered by the chat
format plugin (or the format named). A client that disconnects cancels its generation; a generation
cancelled by the daemon (it is stopping) is reported as an error, never as a complete answer.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..core.errors import RWKVHubError
from ..core.logprobs import MAX_TOP_LOGPROBS, token_name
from ..hub.presets import PARAM_TYPES
from .protocol import MAX_STOP_CHARS, MAX_STOPS, ProtocolError, loads, logprob_json

if TYPE_CHECKING:
    from ..core.logprobs import TokenLogprob
    from ..hub.stream import HubStream
    from .server import Daemon

log = logging.getLogger("rwkv_hub")

# Fields of an OpenAI request that become sampling parameters, and the name they take here.
PARAMS = {
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "penalty_decay": "penalty_decay",
    "seed": "seed",
    "stop": "stop",
    "logit_bias": "logit_bias",  # ids of this model's tokenizer, not OpenAI's
}
# OpenAI fields accepted and ignored, whatever their value: they do not change the text (who asks, storage,
# routing, caching), or ask for something this daemon does not produce (tool calls, structured output,
# reasoning), which the answer then simply lacks.
IGNORED = {
    "user",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "response_format",
    "reasoning_effort",
    "verbosity",
    "web_search_options",
    "prediction",
}
# OpenAI fields accepted only as null or their default: any other value asks for a different answer than the
# one this daemon would give. Field -> (its default, why another value is refused).
DEFAULT_ONLY: dict[str, tuple[Any, str]] = {
    "n": (1, "one choice per request"),
    "best_of": (1, "one choice per request"),
    "suffix": ("", "text after the insertion point is not supported; send the text before it as the prompt"),
    "modalities": (["text"], "only text is produced"),
    "audio": (None, "only text is produced"),
}
# Fields this module reads itself: on both routes, and on one.
OWN = {"model", "stream", "stream_options", "preset", "format", "logprobs"}
CHAT_FIELDS = {"messages", "top_logprobs"}
COMPLETION_FIELDS = {"prompt", "echo"}
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def add_routes(app: web.Application, daemon: Daemon) -> None:
    api = _Api(daemon)
    app.router.add_get("/v1/models", api.models)
    app.router.add_get("/v1/models/{model:.+}", api.model)
    app.router.add_post("/v1/completions", api.completions)
    app.router.add_post("/v1/chat/completions", api.chat)


class _Refusal(Exception):
    """A request this API refuses; `response()` is the OpenAI-shaped error that says why."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str = "bad_request"):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code

    def response(self) -> web.Response:
        from .server import http_error

        headers = {"Retry-After": "1"} if self.code == "busy" else None  # busy is brief: a slot frees soon
        return http_error(self.status, self.code, str(self), self.param, headers)


class _Api:
    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    @property
    def model_id(self) -> str:
        return self.daemon.hub.engine.model.path.stem

    def _model(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": int(self.daemon.started), "owned_by": "rwkv-hub"}

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model()]})

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name != self.model_id:
            message = f"the model {name!r} does not exist; this daemon serves {self.model_id!r}"
            return _Refusal(message, "model", 404, "model_not_found").response()
        return web.json_response(self._model())

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=True)

    async def _answer(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await self._body(request)
            _check_fields(body, OWN | (CHAT_FIELDS if chat else COMPLETION_FIELDS))
            req = _chat_request(body) if chat else _completion_request(body)
            req["params"] = self._params(body, chat)
            scored = _logprobs(body, chat)
            if scored is not None:
                req["logprobs"] = scored
            preset = _string(body, "preset")
            if preset:
                req["preset"] = preset
            _string(body, "model")  # any name is served by the one model (docs/protocol.md)
            streaming = _flag(body, "stream")
            options = body.get("stream_options")
            if options is not None and not isinstance(options, dict):
                raise _Refusal("stream_options must be an object", "stream_options")
            include_usage = _flag(options or {}, "include_usage", "stream_options.include_usage")
            echo = req["input"]["text"] if not chat and _flag(body, "echo") else ""
            if echo and scored is not None:
                message = "logprobs with echo (the log probabilities of the prompt's tokens) are not supported"
                raise _Refusal(message, "echo")
            try:
                stream = self.daemon.hub.submit(req)
                await stream.start()  # a plugin's failure, a busy engine: an error status, before any answer
            except RWKVHubError as e:
                from .server import error_code

                code = error_code(e)
                status = 503 if code == "busy" else 400
                raise _Refusal(str(e), _param_of(str(e), body), status, code) from None
        except _Refusal as r:
            return r.response()
        self.daemon.counters["req_openai_chat" if chat else "req_openai_completions"] += 1
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        base = {"id": rid, "created": int(time.time()), "model": self.model_id}
        if streaming:
            return await self._sse(request, stream, base, chat, echo, include_usage, scored is not None)
        try:
            text = await stream.text()
        except RWKVHubError as e:  # the model failed on this request
            return _Refusal(str(e), None, 500, "internal").response()
        except BaseException:  # CancelledError: the client went away, or the server is stopping
            stream.cancel()
            self.daemon.count_when_done(stream)
            raise
        self.daemon.count_finished(stream)
        r = stream.result
        if r.finish_reason == "cancelled":
            return _Refusal(CANCELLED, None, 503, "cancelled").response()
        finish = _finish(r.finish_reason)
        lps = _choice_logprobs(stream.take_logprobs(), chat, len(echo)) if scored is not None else None
        if chat:
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "logprobs": lps, "finish_reason": finish}
            return web.json_response(base | {"object": "chat.completion", "choices": [choice], "usage": _usage(r)})
        choice = {"index": 0, "text": echo + text, "logprobs": lps, "finish_reason": finish}
        return web.json_response(base | {"object": "text_completion", "choices": [choice], "usage": _usage(r)})

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            text = await request.text()
        except UnicodeDecodeError:
            raise _Refusal("the body must be a JSON object in UTF-8") from None
        try:
            body = loads(text, self.daemon.config.limits.max_json_depth)
        except ProtocolError as e:
            raise _Refusal(str(e), e.param) from None
        if not isinstance(body, dict):
            raise _Refusal("the body must be a JSON object")
        return body

    def _params(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        """The sampling parameters, with their types, the stop strings' bounds and the daemon's max_tokens
        cap checked here; ranges are checked by the hub (SamplingParams)."""
        from .server import check_max_tokens

        params: dict[str, Any] = {}
        for field, name in PARAMS.items():
            value = body.get(field)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, PARAM_TYPES[name]):
                raise _Refusal(f"{field} has the wrong type ({type(value).__name__})", field)
            if name == "max_tokens":
                try:
                    check_max_tokens(value, self.daemon.config.limits.max_new_tokens, name=field)
                except ProtocolError as e:
                    raise _Refusal(str(e), field, code=e.code) from None
            params[name] = value
        stops = params.get("stop", [])
        stops = [stops] if isinstance(stops, str) else stops
        if len(stops) > MAX_STOPS or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops):
            raise _Refusal(
                f"stop must be a string or up to {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS} characters", "stop"
            )
        if not chat:
            params.setdefault("max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)
        return params

    async def _sse(
        self,
        request: web.Request,
        stream: HubStream,
        base: dict[str, Any],
        chat: bool,
        echo: str,
        usage: bool,
        scored: bool,
    ) -> web.StreamResponse:
        """The answer as server-sent events. A generation that ends cancelled (the daemon is stopping) or
        failed ends with an error event instead of a finish reason, then `[DONE]`. With log probabilities,
        each chunk carries those of its own tokens."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, finish: str | None, first: bool = False) -> bytes:
            lps = _choice_logprobs(stream.take_logprobs(), chat, len(echo)) if scored and not first else None
            if chat:
                d = ({"role": "assistant"} if first else {}) | ({"content": delta} if delta is not None else {})
                choice = {"index": 0, "delta": d, "logprobs": lps, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": lps, "finish_reason": finish}
            return _event(base | {"object": obj, "choices": [choice]})

        try:
            await resp.prepare(request)
            if chat:
                await resp.write(chunk(None, None, first=True))
            if echo:  # never with log probabilities: those of the prompt are not made
                await resp.write(chunk(echo, None))
            async for delta in stream:
                await resp.write(chunk(delta, None))
            self.daemon.count_finished(stream)
            r = stream.result
            if r.finish_reason == "cancelled":
                await resp.write(_event(_error_event(CANCELLED, "cancelled")))
            else:
                await resp.write(chunk(None if chat else "", _finish(r.finish_reason)))
                if usage:  # as OpenAI's: one more chunk, with no choices and the whole request's usage
                    await resp.write(_event(base | {"object": obj, "choices": [], "usage": _usage(r)}))
            await resp.write(b"data: [DONE]\n\n")
        except ConnectionError:  # the client went away as we wrote: an ordinary end, not a fault
            log.debug("the client of %s went away", base["id"])
            stream.cancel()
            self.daemon.count_when_done(stream)
        except RWKVHubError as e:  # the model failed mid-answer: say so in the stream, which has begun
            try:
                await resp.write(_event(_error_event(str(e), "internal")) + b"data: [DONE]\n\n")
            except ConnectionError:
                pass
        except BaseException:  # CancelledError: the client went away, or the server is stopping
            stream.cancel()
            self.daemon.count_when_done(stream)
            raise
        return resp


CANCELLED = "the generation was cancelled before it finished (the daemon is stopping)"


def _check_fields(body: dict[str, Any], own: set[str]) -> None:
    unknown = sorted(set(body) - set(PARAMS) - IGNORED - set(DEFAULT_ONLY) - own)
    if unknown:
        raise _Refusal(f"unknown field {unknown[0]!r}", unknown[0])
    for field, (default, why) in DEFAULT_ONLY.items():
        value = body.get(field)
        if value is not None and not (type(value) is type(default) and value == default):
            raise _Refusal(f"{field} = {json.dumps(value)[:100]} is not supported: {why}", field)


def _completion_request(body: dict[str, Any]) -> dict[str, Any]:
    prompt = body.get("prompt")
    prompt = "" if prompt is None else prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _Refusal("prompt must be a string (one prompt per request)", "prompt")
    return {"format": _string(body, "format") or "raw", "input": {"text": prompt}}


def _chat_request(body: dict[str, Any]) -> dict[str, Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Refusal("messages must be a non-empty list of {role, content}", "messages")
    system, turns = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _Refusal(f"messages[{i}] must be an object with a role and content", f"messages[{i}]")
        content = _content(m.get("content"))
        if content is None:
            raise _Refusal(f"messages[{i}].content must be text (or a list of text parts)", f"messages[{i}].content")
        role = {"developer": "system"}.get(m["role"], m["role"])
        if role not in ("system", "user", "assistant"):
            message = f"messages[{i}].role {m['role']!r} is not supported; use system, user or assistant"
            raise _Refusal(message, f"messages[{i}].role")
        if role == "system" and not turns:
            system.append(content)
        else:
            turns.append({"role": role, "content": content})
    if not turns:
        raise _Refusal("messages need at least one user or assistant message", "messages")
    req: dict[str, Any] = {"input": {"messages": turns, "system": "\n".join(system)}}
    fmt = _string(body, "format")
    if fmt:
        req["format"] = fmt
    return req


def _logprobs(body: dict[str, Any], chat: bool) -> int | None:
    """How many alternatives to report with each token, or None for no log probabilities: the chat route's
    `logprobs` (true/false) and `top_logprobs` (0-20), the completions route's `logprobs` (0-20)."""
    if chat:
        top = body.get("top_logprobs")
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS):
            raise _Refusal(f"top_logprobs must be a whole number from 0 to {MAX_TOP_LOGPROBS}", "top_logprobs")
        if not _flag(body, "logprobs"):
            if top is not None:
                raise _Refusal("top_logprobs needs logprobs: true", "top_logprobs")
            return None
        return top or 0
    n = body.get("logprobs")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_TOP_LOGPROBS):
        raise _Refusal(f"logprobs must be a whole number from 0 to {MAX_TOP_LOGPROBS}, or null", "logprobs")
    return n


def _choice_logprobs(entries: list[TokenLogprob], chat: bool, echo: int) -> dict[str, Any]:
    """A choice's `logprobs` in the route's shape: chat's list of tokens, or the completions route's
    parallel lists, whose `text_offset` counts from the start of the choice's text (after `echo`
    characters of prompt). A token that is part of a character is named `bytes:\\xNN` there, as OpenAI's."""
    if chat:
        return {"content": [logprob_json(e) for e in entries], "refusal": None}
    return {
        "tokens": [token_name(e.bytes) for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{token_name(b): v for _, b, v in e.top} for e in entries],
        "text_offset": [echo + e.offset for e in entries],
    }


def _string(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise _Refusal(f"{field} must be a string, not {type(value).__name__}", field)
    return value


def _flag(body: dict[str, Any], field: str, name: str | None = None) -> bool:
    """A boolean field (null: false); `"yes"` or `1` is refused rather than guessed at."""
    value = body.get(field)
    if value is not None and not isinstance(value, bool):
        raise _Refusal(f"{name or field} must be true or false, not {json.dumps(value)[:100]}", name or field)
    return bool(value)


def _param_of(message: str, body: dict[str, Any]) -> str | None:
    """The field a hub error is about, from its first word (`top_p = 7 is out of range`, `unknown preset`)."""
    m = re.match(r"(?:request: )?(?:unknown )?(\w+)", message)
    word = m.group(1) if m else None
    return next((f for f in body if word in (f, PARAMS.get(f))), None)


def _content(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    return None


def _usage(r) -> dict[str, int]:
    total = r.prompt_tokens + r.completion_tokens
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens, "total_tokens": total}


def _error_event(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": code}}


def _event(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"
