"""An asyncio client for the daemon's WebSocket protocol (docs/protocol.md), on `websockets`.

    async with Client() as c:                      # finds the token the daemon made
        async with c.chat("hi", session="notes") as reply:
            async for delta in reply:
                print(delta, end="")
        print(reply.done["usage"])

Several requests may run at once on one connection; one reader task routes events to them by id.
Leaving a request's `async with` before it is done cancels it on the server, and so does dropping a
request that is not done (`async for delta in c.generate(...): break`). If the connection drops,
running requests fail with `ConnectionError` and the next request reconnects, backing off between tries.
The TUI, the editor bridge and the bots use this client; it is also the model for clients in other
languages.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import weakref
from typing import Any

import websockets

from ..core.errors import RWKVHubError
from ..hub.config import DEFAULT_PORT
from ..hub.token import get_token

DEFAULT_URL = f"ws://127.0.0.1:{DEFAULT_PORT}/ws"


class ServerError(RWKVHubError):
    """The daemon answered a request with an error event, or refused the connection (`status`: its HTTP
    status, so a caller can tell a wrong token, 401, from an address that is no daemon's WebSocket)."""

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status


class Request:
    """One streaming request: iterate for text deltas; afterwards `done` holds the done event."""

    def __init__(self, client: Client, rid: str, message: dict[str, Any]):
        self.client = client
        self.id = rid
        self.message = message
        self.done: dict[str, Any] | None = None
        self.queue: asyncio.Queue = asyncio.Queue()
        self._sent = False

    async def _ensure_sent(self) -> None:
        if not self._sent:
            self._sent = True
            self._loop = asyncio.get_running_loop()
            await self.client._send(self.message, self)

    def __del__(self) -> None:
        """A request dropped before its end (`async for ... in client.generate(...): break`) is cancelled."""
        if self.done is None and self._sent and self.client._ws is not None:
            client, rid = self.client, self.id
            try:
                self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(client._cancel(rid)))
            except RuntimeError:  # the loop is closed: the connection is gone too
                pass

    async def __aenter__(self) -> Request:
        await self._ensure_sent()
        return self

    async def __aexit__(self, *exc) -> None:
        if self.done is None:
            await self.cancel()

    def __aiter__(self) -> Request:
        return self

    async def __anext__(self) -> str:
        await self._ensure_sent()
        if self.done is not None:
            raise StopAsyncIteration
        ev = await self.queue.get()
        if isinstance(ev, BaseException):
            raise ev
        if ev["type"] == "delta":
            return ev["text"]
        self.client._pending.pop(self.id, None)
        if ev["type"] == "error":
            self.done = ev
            raise ServerError(ev.get("code", "error"), ev.get("message", ""))
        self.done = ev
        raise StopAsyncIteration

    async def text(self) -> str:
        return "".join([d async for d in self])

    async def cancel(self) -> None:
        """Ask the server to stop this request; the done event then says "cancelled"."""
        if self.done is None and self._sent and self.client._ws is not None:
            try:
                await self.client._ws.send(json.dumps({"type": "cancel", "id": self.id}))
            except websockets.ConnectionClosed:
                pass


class Client:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
    ):
        self.url = url
        self.token = token or get_token(create=False)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._ws = None
        self._reader: asyncio.Task | None = None
        # Weak: a request nobody holds any more is dropped here too, and its __del__ cancels it.
        self._pending: weakref.WeakValueDictionary[str, Request] = weakref.WeakValueDictionary()
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """Whether a connection is open now (a request made while it is not connects first)."""
        return self._ws is not None

    async def connect(self) -> None:
        """Connect (again), trying `retries` times with exponential backoff."""
        async with self._lock:
            if self._ws is not None:
                return
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            delay = self.backoff
            for attempt in range(self.retries + 1):
                try:
                    self._ws = await websockets.connect(self.url, additional_headers=headers, max_size=None)
                    break
                except websockets.InvalidStatus as e:  # a refusal (token, origin) does not get better by retrying
                    status = e.response.status_code
                    raise ServerError("refused", f"the daemon refused the connection ({status})", status) from None
                except OSError:
                    if attempt == self.retries:
                        raise ConnectionError(
                            f"no rwkv-hub daemon at {self.url} (is `rwkv-hub serve` running?)"
                        ) from None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_backoff)
            self._reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        self._ws, self._reader = None, None

    async def _read(self) -> None:
        ws = self._ws
        try:
            async for raw in ws:
                ev = json.loads(raw)
                req = self._pending.get(ev.get("id"))
                if req is not None:
                    req.queue.put_nowait(ev)
                req = None  # hold no request while waiting: one nobody else holds must be able to go
        except websockets.ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None
            for req in list(self._pending.values()):
                req.queue.put_nowait(ConnectionError("the connection to the daemon was lost"))
            self._pending.clear()

    async def _cancel(self, rid: str) -> None:
        self._pending.pop(rid, None)
        if self._ws is not None:
            try:
                await self._ws.send(json.dumps({"type": "cancel", "id": rid}))
            except websockets.ConnectionClosed:
                pass

    async def _send(self, message: dict[str, Any], req: Request) -> None:
        await self.connect()
        self._pending[req.id] = req
        try:
            await self._ws.send(json.dumps(message))
        except websockets.ConnectionClosed:  # closed between connect and send: as a drop mid-request
            self._pending.pop(req.id, None)
            raise ConnectionError("the connection to the daemon was lost") from None

    def _request(self, kind: str, **fields: Any) -> Request:
        rid = f"c{next(self._ids)}"
        msg = {"type": kind, "id": rid, **{k: v for k, v in fields.items() if v is not None}}
        return Request(self, rid, msg)

    async def _call(self, kind: str, **fields: Any) -> Any:
        req = self._request(kind, **fields)
        await req._ensure_sent()
        ev = await req.queue.get()
        self._pending.pop(req.id, None)
        if isinstance(ev, BaseException):
            raise ev
        if ev["type"] == "error":
            raise ServerError(ev.get("code", "error"), ev.get("message", ""))
        return ev.get("data", ev)

    # --- the protocol's operations ----------------------------------------------------------------------------

    async def hello(self) -> dict[str, Any]:
        return await self._call("hello")

    def generate(self, prompt: str, *, preset: str | None = None, params: dict | None = None) -> Request:
        return self._request("generate", prompt=prompt, preset=preset, params=params)

    def chat(
        self,
        message: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        input: dict[str, Any] | None = None,
        session: str | None = None,
        system: str | None = None,
        format: str | None = None,
        preset: str | None = None,
        params: dict | None = None,
    ) -> Request:
        return self._request(
            "chat",
            message=message,
            messages=messages,
            input=input,
            session=session,
            system=system,
            format=format,
            preset=preset,
            params=params,
        )

    def complete(
        self,
        prefix: str,
        *,
        suffix: str | None = None,
        language: str | None = None,
        path: str | None = None,
        cursor: dict[str, int] | None = None,
        preset: str | None = None,
        params: dict | None = None,
        max_lines: int | None = None,
        format: str | None = None,
    ) -> Request:
        return self._request(
            "complete",
            prefix=prefix,
            suffix=suffix,
            language=language,
            path=path,
            cursor=cursor,
            preset=preset,
            params=params,
            max_lines=max_lines,
            format=format,
        )

    def selection(
        self,
        command: str,
        text: str,
        *,
        instruction: str | None = None,
        target: str | None = None,
        language: str | None = None,
        path: str | None = None,
        preset: str | None = None,
        params: dict | None = None,
    ) -> Request:
        """A command on an editor's selection: rewrite (with `instruction`), explain, docstring, translate
        (into `target`, default English)."""
        return self._request(
            "selection",
            command=command,
            text=text,
            instruction=instruction,
            target=target,
            language=language,
            path=path,
            preset=preset,
            params=params,
        )

    def compose(
        self,
        format: str,
        *,
        start: str | None = None,
        midi: bytes | None = None,
        preset: str | None = None,
        params: dict | None = None,
        save: bool | None = None,
        svg: bool | None = None,
        wav: bool | None = None,
        name: str | None = None,
    ) -> Request:
        """Music from an ABC or MIDI model: the notation streams; `done["piece"]` says where it was saved.
        `start` is a tune to continue (ABC or MIDI event text), `midi` a .mid file's bytes to continue."""
        import base64

        return self._request(
            "compose",
            format=format,
            midi=base64.b64encode(midi).decode() if midi is not None else None,
            preset=preset,
            params=params,
            save=save,
            svg=svg,
            wav=wav,
            name=name,
            **({"continue": start} if start is not None else {}),
        )

    async def sessions(self) -> list[dict[str, Any]]:
        return await self._call("sessions.list")

    async def create_session(self, session: str | None = None, initial_state: str | None = None) -> dict[str, Any]:
        return await self._call("sessions.create", session=session, initial_state=initial_state)

    async def fork_session(self, session: str, new: str | None = None) -> dict[str, Any]:
        return await self._call("sessions.fork", session=session, new=new)

    async def reset_session(self, session: str) -> dict[str, Any]:
        return await self._call("sessions.reset", session=session)

    async def get_session(self, session: str) -> dict[str, Any]:
        """The session's counters and transcript."""
        return await self._call("sessions.get", session=session)

    async def rewind_session(self, session: str) -> dict[str, Any]:
        """Take back the last turn (to regenerate a reply without re-reading the conversation)."""
        return await self._call("sessions.rewind", session=session)

    async def rename_session(self, session: str, new: str) -> dict[str, Any]:
        return await self._call("sessions.rename", session=session, new=new)

    async def delete_session(self, session: str) -> dict[str, Any]:
        return await self._call("sessions.delete", session=session)
