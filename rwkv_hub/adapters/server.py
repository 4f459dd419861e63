"""The daemon's HTTP side (aiohttp): the WebSocket protocol, health, metrics, and the guard in front.

Every endpoint but `/health` needs the bearer token; any request that carries a browser `Origin` not
explicitly allowed is refused, so a web page cannot drive the local model. An allowed origin gets CORS
headers (its preflight is answered without the token, as browsers send it without one). Every HTTP error
is a JSON body in the OpenAI API's shape. The OpenAI-compatible routes live in `openai_api.py`. All model
work goes through the `Hub`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import weakref
from collections import Counter
from typing import Any

from aiohttp import WSMsgType, web

from ..core.engine import EngineBusy, RequestTooLong
from ..core.errors import RWKVHubError
from ..core.sessions import SessionError
from ..hub.config import Config
from ..hub.hub import Hub
from ..hub.stream import HubStream
from . import openai_api
from .protocol import VERSION, ProtocolError, logprob_json, parse

log = logging.getLogger("rwkv_hub")


def error_code(exc: BaseException) -> str:
    """The protocol's stable code for an error raised while taking a request."""
    if isinstance(exc, ProtocolError):
        return exc.code
    if isinstance(exc, EngineBusy):
        return "busy"
    if isinstance(exc, RequestTooLong):
        return "too_long"
    if isinstance(exc, SessionError):
        return "session"
    if isinstance(exc, RWKVHubError):
        return "bad_request"
    return "internal"


def error_text(exc: BaseException) -> str:
    """What the client is told: our own errors' messages; never the internals of an unexpected one."""
    return str(exc) if isinstance(exc, RWKVHubError) else "internal error; the daemon's log has the details"


def check_max_tokens(value: object, cap: int, rid: str | None = None, name: str = "max_tokens") -> None:
    """max_tokens against this daemon's cap (`limits.max_new_tokens`), so the refusal names the real range
    rather than the library's wider one; other types are left to the parameter checks."""
    if isinstance(value, int) and not isinstance(value, bool) and not 1 <= value <= cap:
        raise ProtocolError(
            "too_long" if value > cap else "bad_request",
            f"{name} = {value} is out of range: this daemon takes 1 to {cap} (limits.max_new_tokens)",
            rid,
            name,
        )


class Daemon:
    """The web application around a Hub: routes, guard, per-connection bookkeeping, metrics."""

    def __init__(self, hub: Hub, config: Config, token: str):
        self.hub = hub
        self.config = config
        self.token = token
        self.counters: Counter[str] = Counter()
        self.started = time.time()
        self.sockets: set[web.WebSocketResponse] = set()
        self._counted: weakref.WeakSet[HubStream] = weakref.WeakSet()  # streams whose end is in the counters
        self._waiting: set[asyncio.Task] = set()  # count_when_done's tasks, kept until they end

    async def close_connections(self) -> None:
        """Say goodbye to every WebSocket client (code 1001, going away), so a shutdown need not wait."""
        for ws in list(self.sockets):
            await ws.close(code=1001, message=b"the daemon is stopping")

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=self.config.limits.max_message_bytes)
        app.on_response_prepare.append(self._cors)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/ws", self._websocket)
        openai_api.add_routes(app, self)
        return app

    # --- the guard ------------------------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        response = await self._guarded(request, handler)
        if response.status >= 400:
            self.counters["errors"] += 1
        return response

    async def _guarded(self, request: web.Request, handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.config.allow_origins:
            self.counters["refused_origin"] += 1
            return http_error(
                403, "forbidden_origin", "requests from web pages are refused unless allow_origins lists them"
            )
        if origin is not None and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            # A CORS preflight of an allowed origin: browsers send it without the token, and ask before each
            # request that carries one. `_cors` adds the origin.
            asked = request.headers.get("Access-Control-Request-Headers", "authorization, content-type")
            headers = {"Access-Control-Allow-Methods": "GET, POST", "Access-Control-Allow-Headers": asked}
            return web.Response(status=204, headers=headers | {"Access-Control-Max-Age": "600"})
        if request.path != "/health":
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            given_bytes = given.strip().encode("utf-8", "surrogateescape")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, self.token.encode()):
                self.counters["refused_token"] += 1
                return http_error(
                    401,
                    "unauthorized",
                    "a bearer token is required (Authorization: Bearer ...; `rwkv-hub token` prints it)",
                )
        try:
            return await handler(request)
        except web.HTTPException as e:  # no such route, wrong method, body too large: in the OpenAI shape too
            if e.status < 400:
                raise
            return self._http_exception(request, e)
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.path)
            return http_error(500, "internal", "internal error; the daemon's log has the details")

    def _http_exception(self, request: web.Request, e: web.HTTPException) -> web.Response:
        if e.status == 404:
            return http_error(404, "not_found", f"no such route: {request.method} {request.path}")
        if e.status == 405:
            allow = e.headers.get("Allow", "")
            message = f"{request.path} does not take {request.method}; it takes {allow}"
            return http_error(405, "method_not_allowed", message, headers={"Allow": allow})
        if e.status == 413:
            limit = self.config.limits.max_message_bytes
            return http_error(413, "too_large", f"the body is larger than max_message_bytes ({limit} bytes)")
        return http_error(e.status, "bad_request", e.text or e.reason)

    async def _cors(self, request: web.Request, response: web.StreamResponse) -> None:
        """Let a page on an allowed origin read the answers (errors included); other origins got 403."""
        origin = request.headers.get("Origin")
        if origin is not None and origin in self.config.allow_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "Retry-After"
            response.headers["Vary"] = "Origin"

    # --- health and metrics ---------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _metrics(self, request: web.Request) -> web.Response:
        engine = self.hub.engine
        cache = engine.cache.stats if engine.cache is not None else None
        lines = [
            "# TYPE rwkv_hub_requests_total counter",
            *(f'rwkv_hub_requests_total{{kind="{k}"}} {v}' for k, v in sorted(self._kinds().items())),
            "# TYPE rwkv_hub_tokens_generated_total counter",
            f"rwkv_hub_tokens_generated_total {self.counters['tokens']}",
            "# TYPE rwkv_hub_prompt_tokens_total counter",
            f"rwkv_hub_prompt_tokens_total {self.counters['prompt_tokens']}",
            "# TYPE rwkv_hub_cancelled_total counter",
            f"rwkv_hub_cancelled_total {self.counters['cancelled']}",
            "# TYPE rwkv_hub_errors_total counter",
            f"rwkv_hub_errors_total {self.counters['errors']}",
            "# TYPE rwkv_hub_active_streams gauge",
            f"rwkv_hub_active_streams {engine.active}",
            "# TYPE rwkv_hub_queue_length gauge",
            f"rwkv_hub_queue_length {engine.queued}",
            "# TYPE rwkv_hub_websocket_connections gauge",
            f"rwkv_hub_websocket_connections {self.counters['ws_open']}",
        ]
        if cache is not None:
            lines += [
                "# TYPE rwkv_hub_cache_hits_total counter",
                f"rwkv_hub_cache_hits_total {cache.hits}",
                "# TYPE rwkv_hub_cache_misses_total counter",
                f"rwkv_hub_cache_misses_total {cache.misses}",
                "# TYPE rwkv_hub_cache_bytes gauge",
                f"rwkv_hub_cache_bytes {engine.cache.nbytes}",
            ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    def _kinds(self) -> dict[str, int]:
        return {k.removeprefix("req_"): v for k, v in self.counters.items() if k.startswith("req_")}

    def count_finished(self, stream: HubStream) -> None:
        """Add a finished stream to the counters, once, whichever path saw it end."""
        r = stream.result
        if r is not None and stream not in self._counted:
            self._counted.add(stream)
            self.counters["tokens"] += r.completion_tokens
            self.counters["prompt_tokens"] += r.prompt_tokens
            if r.finish_reason == "cancelled":
                self.counters["cancelled"] += 1

    def count_when_done(self, stream: HubStream) -> None:
        """Count a stream whose client left (a disconnect, a closed socket) once the engine has ended it.

        Its reader is gone, so this reads what is still queued for it until the engine's end.
        """

        async def wait() -> None:
            with contextlib.suppress(RWKVHubError):  # a failed generation: nothing to count
                async for _ in stream.stream:
                    pass
            self.count_finished(stream)

        task = asyncio.get_running_loop().create_task(wait())
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    # --- what the server says about itself --------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        model = self.hub.engine.model
        host = self.hub.host
        return {
            "type": "hello",
            "protocol": VERSION,
            "model": {
                "name": model.path.name,
                "n_layer": model.spec.n_layer,
                "n_embd": model.spec.n_embd,
                "vocab_size": model.spec.vocab_size,
                "strategy": model.strategy.name,
            },
            "formats": sorted(host.formats),
            "presets": sorted(host.presets),
            "format_details": [{"name": n, "description": f.description} for n, f in sorted(host.formats.items())],
            "preset_details": [p.to_dict() for _, p in sorted(host.presets.items())],
            "limits": dict(self.config.limits.__dict__),
        }

    # --- the WebSocket protocol -------------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=self.config.limits.max_message_bytes, heartbeat=30)
        await ws.prepare(request)
        self.counters["ws_open"] += 1
        self.sockets.add(ws)
        conn = _Connection(self, ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await conn.handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await conn.send_error(
                        None, "bad_request", "binary frames are not part of the protocol; send JSON text"
                    )
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.counters["ws_open"] -= 1
            self.sockets.discard(ws)
            conn.close()  # a client that goes away cancels its generations
        return ws


class _Connection:
    """One WebSocket client: its running requests by id."""

    def __init__(self, daemon: Daemon, ws: web.WebSocketResponse):
        self.daemon = daemon
        self.ws = ws
        self.running: dict[str, tuple[asyncio.Task, HubStream | None]] = {}
        self.cancelled: set[str] = set()  # running ids already cancelled: they hold no place in the limit
        self.completing: dict[str, str] = {}  # document path -> its running completion's id

    async def send(self, event: dict[str, Any]) -> None:
        if not self.ws.closed:
            try:
                await self.ws.send_str(json.dumps(event, ensure_ascii=False))
            except (ConnectionError, RuntimeError):  # the client went away mid-send
                pass

    async def send_error(self, rid: str | None, code: str, message: str) -> None:
        self.daemon.counters["errors"] += 1
        await self.send({"type": "error", "id": rid, "code": code, "message": message})

    def close(self) -> None:
        for task, stream in self.running.values():
            if stream is not None:
                stream.cancel()
                self.daemon.count_when_done(stream)
            task.cancel()

    async def handle(self, text: str) -> None:
        limits = self.daemon.config.limits
        try:
            msg = parse(text, limits.max_json_depth)
        except ProtocolError as e:
            await self.send_error(e.request_id, e.code, str(e))
            return
        kind, rid = msg["type"], msg.get("id")
        try:
            if kind == "hello":
                await self.send(self.daemon.hello() | ({"id": rid} if rid else {}))
            elif kind == "cancel":
                entry = self.running.get(rid)
                if entry is None:
                    raise ProtocolError("not_found", f"no running request with id {rid!r}", rid)
                if entry[1] is not None:
                    entry[1].cancel()
                    self.cancelled.add(rid)
            elif kind.startswith("sessions."):
                await self.send({"type": "result", "id": rid, "data": self._session_op(kind, msg)})
            else:
                if rid in self.running:
                    raise ProtocolError("bad_request", f"a request with id {rid!r} is already running", rid)
                check_max_tokens((msg.get("params") or {}).get("max_tokens"), limits.max_new_tokens, rid)
                if kind == "complete":  # first: the completion it replaces no longer counts against the limit
                    self._supersede(msg)
                if len(self.running) - len(self.cancelled) >= limits.max_requests_per_connection:
                    raise ProtocolError(
                        "busy", f"at most {limits.max_requests_per_connection} requests per connection", rid
                    )
                if kind == "complete":
                    stream = self.daemon.hub.complete(msg)
                elif kind == "selection":
                    stream = self.daemon.hub.selection(msg)
                elif kind == "compose":
                    stream = self.daemon.hub.compose(self._compose_request(msg))
                else:
                    stream = self.daemon.hub.submit(self._hub_request(kind, msg))
                self.daemon.counters[f"req_{kind}"] += 1
                finish = self._save_piece(msg, stream) if kind == "compose" and msg.get("save", True) else None
                task = asyncio.create_task(self._pump(rid, stream, finish))
                self.running[rid] = (task, stream)
                if kind == "complete":
                    self.completing[msg.get("path") or ""] = rid
        except Exception as e:  # every failure becomes an error event; the connection stays usable
            if not isinstance(e, RWKVHubError):
                log.exception("unexpected error on a %s request", kind)
            await self.send_error(rid, error_code(e), error_text(e))

    def _supersede(self, msg: dict[str, Any]) -> None:
        """A new completion for a document cancels the one still running for it (the user typed on)."""
        old = self.completing.pop(msg.get("path") or "", None)
        entry = self.running.get(old) if old else None
        if entry is not None and entry[1] is not None:
            entry[1].cancel()
            self.cancelled.add(old)

    def _hub_request(self, kind: str, msg: dict[str, Any]) -> dict[str, Any]:
        req: dict[str, Any] = {
            k: msg[k] for k in ("preset", "params", "logit_processors", "stream_filters", "logprobs") if k in msg
        }
        if kind == "generate":
            req |= {"format": "raw", "input": {"text": msg["prompt"]}}
        else:  # chat
            inp = dict(msg.get("input") or {})
            if "messages" in msg:
                inp["messages"] = msg["messages"]
            if "message" in msg:
                inp["input"] = msg["message"]
            if "system" in msg:
                inp["system"] = msg["system"]
            req |= {"input": inp}
            for k in ("format", "initial_state"):
                if k in msg:
                    req[k] = msg[k]
            sid = msg.get("session")
            if sid is not None:
                sessions = self.daemon.hub.engine.sessions
                if sessions is None:
                    raise SessionError("this daemon keeps no sessions")
                if sid not in sessions:  # created on first use, from the initial state if one is named
                    named = req.pop("initial_state", None)
                    sessions.create(sid, self.daemon.hub.initial_state(named) if named else None)
                req["session"] = sid
        return req

    def _session_op(self, kind: str, msg: dict[str, Any]) -> Any:
        sessions = self.daemon.hub.engine.sessions
        if sessions is None:
            raise SessionError("this daemon keeps no sessions")
        sid = msg.get("session")
        if kind == "sessions.list":
            return sessions.list()
        if kind == "sessions.create":
            initial = self.daemon.hub.initial_state(msg["initial_state"]) if msg.get("initial_state") else None
            return sessions.create(sid, initial).info()
        if sid is None:
            raise ProtocolError("bad_request", f"{kind} needs a session", msg.get("id"))
        if kind == "sessions.fork":
            return sessions.fork(sid, msg.get("new")).info()
        if kind == "sessions.get":
            s = sessions.get(sid)
            return s.info() | {"transcript": s.transcript}
        if kind == "sessions.rewind":
            s = sessions.rewind(sid)
            return s.info() | {"transcript": s.transcript}
        if kind == "sessions.rename":
            if not msg.get("new"):
                raise ProtocolError("bad_request", "sessions.rename needs 'new'", msg.get("id"))
            return sessions.rename(sid, msg["new"]).info()
        if kind == "sessions.reset":
            return sessions.reset(sid).info()
        sessions.delete(sid)
        return {"deleted": sid}

    def _compose_request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A compose message as the hub takes it; a .mid to continue comes base64-encoded."""
        req = {k: msg[k] for k in ("format", "continue", "preset", "params") if k in msg}
        if "midi" in msg:
            import base64
            import binascii

            from ..music.midi_text import midi_to_text

            try:
                data = base64.b64decode(msg["midi"], validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError("bad_request", "midi: not base64 of a .mid file", msg.get("id")) from None
            req["continue"] = midi_to_text(data, close=False)
        return req

    def _save_piece(self, msg: dict[str, Any], stream: HubStream):
        """What a finished composition adds to its done event: the files it was saved as."""

        async def finish() -> dict[str, Any]:
            from ..hub.music import piece_text, safe_stem, write_piece

            fmt = stream.request["format"]
            text = piece_text(fmt, stream.request.get("start", ""), stream.result.text)  # no filters: as streamed
            stem = f"{safe_stem(msg.get('name') or msg['id'])}-{time.strftime('%Y%m%d-%H%M%S')}"
            out = self.daemon.config.compositions_path() / stem
            try:
                piece = await asyncio.to_thread(
                    write_piece, fmt, text, out, svg=bool(msg.get("svg")), wav=bool(msg.get("wav"))
                )
            except RWKVHubError as e:  # nothing playable came back: the notation is still the answer
                return {"piece": {"notation": text, "error": str(e)}}
            return {"piece": {"notation": piece.notation} | piece.to_dict()}

        return finish

    async def _pump(self, rid: str, stream: HubStream, finish=None) -> None:
        """Forward a request's deltas and its end (`finish()` adds fields to the done event)."""
        scored = stream.request.get("logprobs") is not None

        def logprobs() -> dict[str, Any]:
            return {"logprobs": [logprob_json(e) for e in stream.take_logprobs()]} if scored else {}

        try:
            async for delta in stream:
                await self.send({"type": "delta", "id": rid, "text": delta} | logprobs())
            r = stream.result
            self.daemon.count_finished(stream)
            extra = await finish() if finish is not None and r.finish_reason != "cancelled" else {}
            await self.send(
                extra
                | logprobs()
                | {
                    "type": "done",
                    "id": rid,
                    "finish_reason": stream.finish_reason,
                    "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens},
                    "timings": {
                        "queue_s": stream.stats.queue_s,
                        "first_token_s": stream.stats.first_token_s,
                        "prefill_s": r.prefill_s,
                        "decode_s": r.decode_s,
                        "cached_tokens": stream.stats.cached_tokens,
                    },
                }
            )
        except asyncio.CancelledError:
            stream.cancel()
            raise
        except Exception as e:  # a failed generation is this request's error, not the connection's
            await self.send_error(rid, error_code(e), error_text(e))
        finally:
            self.running.pop(rid, None)
            self.cancelled.discard(rid)


# OpenAI's error types, by HTTP status; our stable code goes in `code`.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "server_error",
}


def http_error(
    status: int, code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """Errors in the OpenAI API's shape, which its clients know how to show; `param` names the field at fault."""
    body = {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
    return web.json_response(body, status=status, headers=headers)
