"""The daemon on loopback, driven by real clients: the official `openai` package over HTTP and `websockets`
over the protocol; plus the guard (token, Origin), garbage input, and disconnects that cancel."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
import websockets
from conftest import DaemonThread

from rwkv_hub.hub.config import Config, Limits

TOKEN = "test-token-0123456789"
SHAPE = dict(n_layer=2, n_embd=128, vocab_size=256, head_size=64)
APP = "https://my.app"  # the one browser origin the daemon allows
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def daemon(checkpoint_factory, model_factory, tmp_path_factory):
    model = model_factory(checkpoint_factory(**SHAPE))
    server = DaemonThread()
    limits = Limits(max_active=8, max_message_bytes=64 * 1024, max_requests_per_connection=4)
    config = Config(port=0, allow_origins=[APP], limits=limits)
    hub = server.hub(model, tmp_path_factory.mktemp("sessions"), cache_bytes=2**26, limits=config.limits.engine())
    running = server.start(hub, config, TOKEN)
    yield running
    server.stop(running).result(60)
    server.close()


def client(daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key=TOKEN, max_retries=0, timeout=60)


def get(daemon, path: str, headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(daemon.url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def request(daemon, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None):
    """(status, headers, JSON body or None) of one raw HTTP request, errors included."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(daemon.url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, hdrs, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, e.headers, e.read()
    return status, hdrs, json.loads(raw) if raw else None


def idle(daemon) -> None:
    """Wait until the engine has nothing to do (earlier tests' cancelled streams have ended and been counted)."""
    deadline = time.time() + 20
    while (daemon.daemon.hub.engine.active or daemon.daemon.hub.engine.queued) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)


def metric(daemon, name: str) -> float:
    _, text = get(daemon, "/metrics", {"Authorization": f"Bearer {TOKEN}"})
    line = next(x for x in text.splitlines() if x.startswith(name + " "))
    return float(line.split()[-1])


def ws_run(daemon, coro_fn, headers: dict | None = None):
    async def go():
        h = {"Authorization": f"Bearer {TOKEN}"} if headers is None else headers
        async with websockets.connect(daemon.url.replace("http", "ws", 1) + "/ws", additional_headers=h) as ws:
            return await coro_fn(ws)

    return asyncio.run(asyncio.wait_for(go(), 60))


async def until_done(ws, rid: str) -> tuple[str, dict]:
    text = ""
    while True:
        ev = json.loads(await ws.recv())
        if ev.get("id") != rid:
            continue
        if ev["type"] == "delta":
            text += ev["text"]
        elif ev["type"] in ("done", "error"):
            return text, ev


# --- the OpenAI API, with the official client --------------------------------------------------------------


def test_openai_models_and_completions(daemon):
    c = client(daemon)
    models = c.models.list()
    assert [m.id for m in models.data] == [daemon.daemon.hub.engine.model.path.stem]
    r = c.completions.create(model="any", prompt="def f(x):", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"
    chunks = list(c.completions.create(model="any", prompt="def f(x):", max_tokens=12, temperature=0, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_openai_chat_streaming_and_not(daemon):
    c = client(daemon)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    r = c.chat.completions.create(
        model="x", messages=msgs, max_tokens=10, temperature=0, extra_body={"penalty_decay": 0.99}
    )
    assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens <= 10
    parts = list(
        c.chat.completions.create(
            model="x", messages=msgs, max_tokens=10, temperature=0, stream=True, extra_body={"penalty_decay": 0.99}
        )
    )
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == r.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="top_p"):
        c.chat.completions.create(model="x", messages=msgs, top_p=7)
    with pytest.raises(openai.BadRequestError, match="unknown preset"):
        c.chat.completions.create(model="x", messages=msgs, extra_body={"preset": "nope"})


def model_logprobs(daemon, prompt: str, generated: list[int]) -> list[float]:
    """Each generated token's log probability as the daemon's model computes it, read in one pass."""
    import torch

    model = daemon.daemon.hub.engine.model
    ids = model.tokenizer.encode(prompt)
    logits, _ = model.forward_every(ids + generated[:-1])
    lp = torch.log_softmax(logits[len(ids) - 1 :], -1)
    return lp.gather(1, torch.tensor(generated).unsqueeze(1)).squeeze(1).tolist()


def token_bytes(name: str) -> bytes:
    """The bytes of a completions-route token name (`bytes:\\xNN...` for part of a character)."""
    return bytes.fromhex(name[6:].replace("\\x", "")) if name.startswith("bytes:") else name.encode()


def test_openai_log_probabilities_streamed_and_not(daemon):
    c = client(daemon)
    plain = dict(temperature=0, presence_penalty=0, frequency_penalty=0)  # greedy: the token picked is the top one
    r = c.completions.create(model="m", prompt="def f(x):", max_tokens=10, logprobs=3, **plain)
    lp, text = r.choices[0].logprobs, r.choices[0].text
    raw = [token_bytes(t) for t in lp.tokens]
    assert b"".join(raw).decode("utf-8", "replace") == text and any(t.startswith("bytes:\\x") for t in lp.tokens)
    assert len(lp.token_logprobs) == r.usage.completion_tokens == 10
    for top, v in zip(lp.top_logprobs, lp.token_logprobs, strict=True):
        assert len(top) == 3 and max(top.values()) == pytest.approx(v)
    offsets = lp.text_offset  # where each token's text begins in `text`
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] < len(text)
    # A token's text is where its decoding begins: after a lone lead byte's U+FFFD when it is what ended it.
    starts = [
        text[o:].startswith(t) or text[o:].startswith("\ufffd" + t) for o, t in zip(offsets, lp.tokens, strict=True)
    ]
    assert all(ok for ok, t in zip(starts, lp.tokens, strict=True) if not t.startswith("bytes:"))
    ids = [daemon.daemon.hub.engine.model.tokenizer.encode(b)[0] for b in raw]  # one byte a token here
    assert lp.token_logprobs == pytest.approx(model_logprobs(daemon, "def f(x):", ids), abs=1e-4)
    chunks = list(c.completions.create(model="m", prompt="def f(x):", max_tokens=10, logprobs=3, stream=True, **plain))
    streamed = [t for ch in chunks if ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens]
    offsets = [o for ch in chunks if ch.choices[0].logprobs for o in ch.choices[0].logprobs.text_offset]
    assert streamed == lp.tokens and offsets == lp.text_offset

    msgs = [{"role": "user", "content": "hi"}]
    r = c.chat.completions.create(model="m", messages=msgs, max_tokens=8, logprobs=True, top_logprobs=2, **plain)
    content = r.choices[0].logprobs.content
    assert len(content) <= r.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content)
    joined = bytes(b for t in content for b in t.bytes).decode("utf-8", "replace")
    assert joined.strip() == r.choices[0].message.content and content[0].top_logprobs[0].logprob >= content[0].logprob
    parts = list(
        c.chat.completions.create(
            model="m", messages=msgs, max_tokens=8, logprobs=True, top_logprobs=2, stream=True, **plain
        )
    )
    streamed = [t.token for p in parts if p.choices and p.choices[0].logprobs for t in p.choices[0].logprobs.content]
    assert streamed == [t.token for t in content]
    assert c.chat.completions.create(model="m", messages=msgs, max_tokens=3, logprobs=False).choices[0].logprobs is None

    refused = [
        (dict(messages=msgs, top_logprobs=2), "top_logprobs needs logprobs: true"),
        (dict(messages=msgs, logprobs=True, top_logprobs=21), "top_logprobs must be a whole number from 0 to 20"),
    ]
    for kw, message in refused:
        with pytest.raises(openai.BadRequestError, match=message) as e:
            c.chat.completions.create(model="m", **kw)
        assert e.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError, match="logprobs must be a whole number from 0 to 20"):
        c.completions.create(model="m", prompt="x", logprobs=21)
    with pytest.raises(openai.BadRequestError, match="logprobs with echo") as e:
        c.completions.create(model="m", prompt="x", logprobs=1, echo=True)
    assert e.value.body["param"] == "echo"


def test_websocket_deltas_carry_their_tokens_log_probabilities(daemon):
    async def go(ws):
        params = {"temperature": 0, "max_tokens": 12}
        await ws.send(json.dumps({"type": "generate", "id": "g", "prompt": "import", "params": params, "logprobs": 1}))
        events = []
        while True:
            ev = json.loads(await ws.recv())
            if ev.get("id") == "g":
                events.append(ev)
                if ev["type"] in ("done", "error"):
                    break
        await ws.send(json.dumps({"type": "generate", "id": "b", "prompt": "x", "params": params, "logprobs": 99}))
        _, bad = await until_done(ws, "b")
        return events, bad

    events, bad = ws_run(daemon, go)
    deltas, done = events[:-1], events[-1]
    assert done["type"] == "done" and all("logprobs" in ev for ev in events)
    entries = [e for ev in events for e in ev["logprobs"]]
    assert len(entries) == done["usage"]["completion_tokens"] == 12
    joined = bytes(b for e in entries for b in e["bytes"]).decode("utf-8", "replace")
    assert joined == "".join(d["text"] for d in deltas)
    assert all(len(e["top_logprobs"]) == 1 and e["top_logprobs"][0]["logprob"] >= e["logprob"] for e in entries)
    assert bad["type"] == "error" and "logprobs" in bad["message"]


# --- the guard ----------------------------------------------------------------------------------------------


def test_token_is_required_except_for_health(daemon):
    assert get(daemon, "/health")[0] == 200
    status, body = get(daemon, "/v1/models")
    assert status == 401 and "Bearer" in body and TOKEN not in body
    assert get(daemon, "/v1/models", {"Authorization": "Bearer wrong"})[0] == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=daemon.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(websockets.InvalidStatus):
        ws_run(daemon, lambda ws: ws.recv(), headers={})


def test_foreign_origins_are_refused(daemon):
    hdr = {"Authorization": f"Bearer {TOKEN}", "Origin": "https://evil.example"}
    assert get(daemon, "/v1/models", hdr)[0] == 403
    with pytest.raises(websockets.InvalidStatus):
        ws_run(daemon, lambda ws: ws.recv(), headers=hdr)


# --- the WebSocket protocol ---------------------------------------------------------------------------------


def test_hello_chat_sessions_and_concurrent_requests(daemon):
    async def go(ws):
        await ws.send(json.dumps({"type": "hello", "id": "h"}))
        hello = json.loads(await ws.recv())
        await ws.send(
            json.dumps({"type": "chat", "id": "a", "session": "s1", "message": "hi", "params": {"max_tokens": 6}})
        )
        await ws.send(json.dumps({"type": "generate", "id": "b", "prompt": "import", "params": {"max_tokens": 5}}))
        ends = {}
        while len(ends) < 2:  # both stream at once; their events interleave on the one connection
            ev = json.loads(await ws.recv())
            if ev["type"] in ("done", "error"):
                ends[ev["id"]] = ev
        da, db = ends["a"], ends["b"]
        await ws.send(
            json.dumps({"type": "chat", "id": "c", "session": "s1", "message": "more", "params": {"max_tokens": 4}})
        )
        _, dc = await until_done(ws, "c")
        await ws.send(json.dumps({"type": "sessions.list", "id": "l"}))
        listing = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "sessions.fork", "id": "f", "session": "s1", "new": "s2"}))
        fork = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "sessions.delete", "id": "d", "session": "s2"}))
        deleted = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "sessions.get", "id": "g", "session": "s1"}))
        got = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "sessions.rewind", "id": "r", "session": "s1"}))
        rewound = json.loads(await ws.recv())
        assert [m["content"] for m in got["data"]["transcript"] if m["role"] == "user"] == ["hi", "more"]
        assert rewound["data"]["turns"] == 1 and len(rewound["data"]["transcript"]) == 2
        return hello, da, db, dc, listing, fork, deleted

    hello, da, db, dc, listing, fork, deleted = ws_run(daemon, go)
    assert hello["protocol"] == 1 and "chat" in hello["formats"] and "creative" in hello["presets"]
    assert {p["name"]: p for p in hello["preset_details"]}["creative"]["params"]["top_p"] == 0.5
    assert da["type"] == db["type"] == dc["type"] == "done"
    assert db["usage"]["completion_tokens"] == 5
    # The session fed only the new turn, after what the first reply's state lacked of its turn end ("\n\n"):
    # all of it or some after a reply cut short by max_tokens, none after one ended by the stop string.
    extra = dc["usage"]["prompt_tokens"] - len("User: more\n\nAssistant:")
    assert extra in (0, 1, 2) and (extra > 0 or da["finish_reason"] != "length")
    assert {s["id"]: s["turns"] for s in listing["data"]}["s1"] == 2
    assert fork["data"]["id"] == "s2" and fork["data"]["turns"] == 2 and deleted["data"] == {"deleted": "s2"}


def test_garbage_gets_error_events_and_the_connection_stays_usable(daemon):
    async def go(ws):
        events = []
        for raw in [
            "{not json",
            json.dumps([1, 2]),
            json.dumps({"type": "explode", "id": "x"}),
            json.dumps({"type": "chat", "id": "y", "message": 5}),
            json.dumps({"type": "generate", "id": "z", "prompt": "x", "params": {"temprature": 1}}),
            json.dumps({"type": "generate", "id": "w", "prompt": "x", "params": {"top_p": 9}}),
            json.dumps({"type": "cancel", "id": "nothing-running"}),
            "[" * 100 + "]" * 100,
            json.dumps({"type": "generate", "id": "deep", "prompt": "x", "params": {"stop": [[[[[]]]]]}}),
        ]:
            await ws.send(raw)
            events.append(json.loads(await ws.recv()))
        await ws.send(b"\x00\x01")
        events.append(json.loads(await ws.recv()))
        await ws.send(json.dumps({"type": "generate", "id": "ok", "prompt": "still here", "params": {"max_tokens": 3}}))
        _, done = await until_done(ws, "ok")
        return events, done

    events, done = ws_run(daemon, go)
    assert all(e["type"] == "error" for e in events)
    codes = [e["code"] for e in events]
    assert codes[:7] == [
        "bad_json",
        "bad_request",
        "unknown_type",
        "bad_request",
        "bad_request",
        "bad_request",
        "not_found",
    ]
    assert "temprature" in events[4]["message"] and "top_p" in events[5]["message"]
    assert all("Traceback" not in e["message"] and TOKEN not in e["message"] for e in events)
    assert done["type"] == "done" and done["usage"]["completion_tokens"] == 3


def test_oversize_frames_close_the_connection_not_the_daemon(daemon):
    async def go(ws):
        await ws.send(json.dumps({"type": "generate", "id": "big", "prompt": "x" * 100_000}))
        return await ws.recv()

    with pytest.raises(websockets.ConnectionClosed):
        ws_run(daemon, go)
    assert get(daemon, "/health")[0] == 200


def test_cancel_by_id_and_disconnect_free_the_slot(daemon):
    async def cancel(ws):
        await ws.send(json.dumps({"type": "generate", "id": "long", "prompt": "a", "params": {"max_tokens": 4000}}))
        await ws.recv()
        await ws.send(json.dumps({"type": "cancel", "id": "long"}))
        return await until_done(ws, "long")

    _, done = ws_run(daemon, cancel)
    assert done["finish_reason"] == "cancelled"
    before = metric(daemon, "rwkv_hub_cancelled_total")

    async def vanish(ws):
        await ws.send(json.dumps({"type": "generate", "id": "gone", "prompt": "a", "params": {"max_tokens": 4000}}))
        await ws.recv()  # one delta, then the client disappears

    ws_run(daemon, vanish)
    deadline = time.time() + 20
    while metric(daemon, "rwkv_hub_active_streams") > 0 and time.time() < deadline:
        time.sleep(0.05)
    assert metric(daemon, "rwkv_hub_active_streams") == 0
    assert daemon.daemon.hub.engine.active == 0 and before >= 1


# --- the project's own client ----------------------------------------------------------------------------------


def test_client_operations_concurrency_and_early_exit(daemon):
    from rwkv_hub.adapters.client import Client, ServerError

    async def go():
        async with Client(daemon.url.replace("http", "ws", 1) + "/ws", token=TOKEN) as c:
            hello = await c.hello()
            await c.create_session("cs")
            a = c.chat("hi", session="cs", params={"max_tokens": 5})
            b = c.generate("abc", params={"max_tokens": 7})
            ta, tb = await asyncio.gather(a.text(), b.text())
            async with c.generate("x", params={"max_tokens": 4000}) as long:
                async for _ in long:
                    break  # leaving early cancels it on the server
            async for _ in c.generate("y", params={"max_tokens": 4000}):
                break  # so does dropping it
            for _ in range(200):
                if daemon.daemon.hub.engine.active == 0:
                    break
                await asyncio.sleep(0.02)
            assert daemon.daemon.hub.engine.active == 0
            with pytest.raises(ServerError, match="bad_request"):
                await c.generate("x", params={"top_p": 5}).text()
            sessions = await c.sessions()
            comp = c.complete("def add(a, b):\n", language="python")
            await comp.text()
            return hello, a.done, b.done, sessions, comp.done

    hello, da, db, sessions, dc = asyncio.run(asyncio.wait_for(go(), 60))
    assert hello["protocol"] == 1
    assert da["usage"]["completion_tokens"] == 5 and db["usage"]["completion_tokens"] == 7
    assert any(s["id"] == "cs" and s["turns"] == 1 for s in sessions)
    assert dc["type"] == "done"
    deadline = time.time() + 20
    while daemon.daemon.hub.engine.active and time.time() < deadline:
        time.sleep(0.05)
    assert daemon.daemon.hub.engine.active == 0


def test_client_reconnects_and_reports_a_missing_daemon(daemon):
    from rwkv_hub.adapters.client import Client

    async def go():
        c = Client(daemon.url.replace("http", "ws", 1) + "/ws", token=TOKEN)
        first = await c.generate("a", params={"max_tokens": 2, "temperature": 0}).text()
        await c._ws.close()  # the connection drops
        await asyncio.sleep(0.1)
        second = await c.generate("a", params={"max_tokens": 2, "temperature": 0}).text()  # reconnects by itself
        await c.close()
        return first, second

    first, second = asyncio.run(asyncio.wait_for(go(), 60))
    assert first == second

    async def missing():
        return await Client("ws://127.0.0.1:9/ws", token=TOKEN, retries=2, backoff=0.01).hello()

    with pytest.raises(ConnectionError, match="is `rwkv-hub serve` running"):
        asyncio.run(missing())


def test_serve_command_starts_prints_where_and_stops_cleanly(checkpoint_factory, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    ckpt = checkpoint_factory(**SHAPE)
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "RWKV_HUB_TOKEN": ""}
    cmd = [sys.executable, "-m", "rwkv_hub", "serve", "--model", str(ckpt), "--strategy", "cpu fp32", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("rwkv-hub: serving ") and " on http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.rsplit(" ", 1)[-1].strip()
        token = (tmp_path / "rwkv-hub" / "token").read_text().strip()
        assert oct((tmp_path / "rwkv-hub" / "token").stat().st_mode & 0o777) == "0o600"
        token_cmd = subprocess.run([sys.executable, "-m", "rwkv_hub", "token"], capture_output=True, text=True, env=env)
        assert token_cmd.stdout.strip() == token
        req = urllib.request.Request(url + "/v1/models", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "stopping" in out and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_refuses_a_remote_host_without_the_flag(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "rwkv_hub", "serve", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 2 and "--allow-remote" in r.stderr


def test_bounded_load_every_request_ends_exactly_once(daemon):
    """A short version of benchmarks/bench_daemon.py: WebSocket and OpenAI clients at once for a few seconds."""
    import collections

    ends: collections.Counter[str] = collections.Counter()
    sent: list[str] = []
    stop_at = time.perf_counter() + 6

    async def ws_client(n: int):
        async with websockets.connect(
            daemon.url.replace("http", "ws", 1) + "/ws", additional_headers={"Authorization": f"Bearer {TOKEN}"}
        ) as ws:
            i = 0
            while time.perf_counter() < stop_at:
                rid = f"w{n}-{i}"
                i += 1
                sent.append(rid)
                await ws.send(json.dumps({"type": "chat", "id": rid, "message": "hi", "params": {"max_tokens": 8}}))
                while True:
                    ev = json.loads(await ws.recv())
                    if ev["type"] in ("done", "error"):
                        ends[ev["id"]] += 1
                        break

    def http_client(n: int):
        c = client(daemon)
        i = 0
        while time.perf_counter() < stop_at:
            rid = f"h{n}-{i}"
            i += 1
            sent.append(rid)
            stream = c.chat.completions.create(
                model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True
            )
            finish = [ch.choices[0].finish_reason for ch in stream if ch.choices and ch.choices[0].finish_reason]
            ends[rid] += len(finish)

    threads = [threading.Thread(target=http_client, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()

    async def all_ws():
        await asyncio.gather(*(ws_client(n) for n in range(8)))

    asyncio.run(asyncio.wait_for(all_ws(), 60))
    for t in threads:
        t.join(60)
    assert len(sent) > 20
    assert all(ends[r] == 1 for r in sent), [r for r in sent if ends[r] != 1][:5]
    assert daemon.daemon.hub.engine.active == 0


def test_config_file_wires_model_plugins_presets_limits_and_sessions(checkpoint_factory, tmp_path, monkeypatch):
    from rwkv_hub.adapters.daemon import build_hub
    from rwkv_hub.hub.config import load_config

    ckpt = checkpoint_factory(**SHAPE)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'model = "{ckpt}"\nstrategy = "cpu fp32"\nsession_folder = "{tmp_path / "s"}"\ncache_mb = 8\n'
        '[limits]\nmax_active = 3\n[plugins]\nmodules = ["plugins.good_plugin", "plugins.clashing"]\n'
        'disable = ["plugins.clashing"]\n[presets.chat]\ntemperature = 0.7\n[presets.mine]\ntop_p = 0.1\n'
    )
    hub = build_hub(load_config(cfg))
    assert hub.engine.model.path == ckpt and hub.engine.limits.max_active == 3
    assert hub.engine.cache.budget_bytes == 8 * 2**20 and hub.engine.sessions.folder == tmp_path / "s"
    assert "shout" in hub.host.formats and hub.host.formats["chat"].description != "my chat"  # disabled
    assert hub.host.presets["chat"].params["temperature"] == 0.7 and hub.host.presets["chat"].params["top_p"] == 0.3
    assert hub.host.presets["mine"].params == {"top_p": 0.1}


def test_a_new_completion_for_a_document_cancels_the_previous_one(daemon):
    async def go(ws):
        slow = {"max_tokens": 400, "stop": [], "temperature": 1.0}
        for rid, path in (("c1", "a.py"), ("c2", "b.py"), ("c3", "a.py")):
            msg = {"type": "complete", "id": rid, "prefix": "x = 1\n", "path": path, "params": slow}
            await ws.send(json.dumps(msg))
        ends = {}
        while len(ends) < 3:
            ev = json.loads(await ws.recv())
            if ev["type"] in ("done", "error"):
                ends[ev["id"]] = ev
        return ends

    ends = ws_run(daemon, go)
    assert ends["c1"]["finish_reason"] == "cancelled"  # superseded by c3, same document
    assert ends["c2"]["finish_reason"] == "length" and ends["c3"]["finish_reason"] == "length"


def test_completions_end_at_the_block_boundary(daemon):
    from rwkv_hub.hub.completion import cut, rules_for

    model = daemon.daemon.hub.engine.model
    cases = []
    for prefix, max_lines in (
        ("def add(a, b):\n    ", None),
        ("x = 1\nif x:\n    ", None),
        ("class A:\n    def f(self):\n        ", None),
        ("def add(a, b):\n    ", 1),
        ("x = 1\nif x:\n    ", 2),
    ):
        gen = model.generate(prefix, temperature=0, max_tokens=64, stop=("\n\n",))
        full = "".join(gen)
        kept, ended = cut(prefix, full, rules_for("python", max_lines))
        if not ended:  # an unfinished line that is only indentation is held back
            last = kept.rfind("\n")
            kept = kept[:last] if last != -1 and not kept[last:].strip() else kept
        cases.append((prefix, max_lines, kept, ended))

    async def go(ws):
        out = []
        for n, (prefix, max_lines, _, _) in enumerate(cases):
            msg = {
                "type": "complete",
                "id": f"k{n}",
                "prefix": prefix,
                "language": "python",
                "params": {"temperature": 0},
            }
            if max_lines:
                msg["max_lines"] = max_lines
            await ws.send(json.dumps(msg))
            out.append(await until_done(ws, f"k{n}"))
        return out

    results = ws_run(daemon, go)
    for (prefix, max_lines, kept, ended), (text, done) in zip(cases, results, strict=True):
        assert text == kept, (prefix, max_lines)
        if max_lines:
            assert text.count("\n") < max_lines
        if ended:
            assert done["finish_reason"] == "stop"


def test_selection_commands_are_instruction_requests(daemon):
    tok = daemon.daemon.hub.engine.model.tokenizer
    prompt = "Instruction: Explain what this python code does, in a few sentences.\n\nInput: total = a + b\n\nResponse:"

    async def go(ws):
        msg = {"type": "selection", "id": "s1", "command": "explain", "text": "total = a + b", "language": "python"}
        await ws.send(json.dumps(msg | {"params": {"max_tokens": 5}}))
        explained = await until_done(ws, "s1")
        await ws.send(json.dumps({"type": "selection", "id": "s2", "command": "rewrite", "text": "x"}))
        no_instruction = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "selection", "id": "s3", "command": "summarise", "text": "x"}))
        unknown = json.loads(await ws.recv())
        return explained, no_instruction, unknown

    (_, done), no_instruction, unknown = ws_run(daemon, go)
    assert done["usage"]["prompt_tokens"] == len(tok.encode(prompt)) and done["usage"]["completion_tokens"] <= 5
    assert no_instruction["code"] == "bad_request" and "rewrite needs an instruction" in no_instruction["message"]
    assert unknown["code"] == "bad_request" and unknown["message"].startswith("command:")


def test_a_request_sent_as_the_connection_closes_fails_with_connection_error(daemon):
    from rwkv_hub.adapters.client import Client

    async def go():
        async with Client(daemon.url.replace("http", "ws", 1) + "/ws", token=TOKEN, retries=0) as c:
            ws = c._ws
            await ws.close()
            c._ws = ws  # the race: closed, but the reader has not yet noticed when a request is sent
            with pytest.raises(ConnectionError, match="connection to the daemon was lost"):
                await c.hello()

    asyncio.run(asyncio.wait_for(go(), 30))


# --- defects found in review: each test fails without its fix ---------------------------------------------------


def test_a_non_streaming_request_is_cancelled_when_its_client_disconnects(daemon):
    idle(daemon)
    before = metric(daemon, "rwkv_hub_cancelled_total")
    body = json.dumps({"prompt": "def f():", "max_tokens": 4000}).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    url = urlsplit(daemon.url)
    with socket.create_connection((url.hostname, url.port)) as s:
        s.sendall(head.encode() + body)
        deadline = time.time() + 10
        while daemon.daemon.hub.engine.active == 0 and time.time() < deadline:
            time.sleep(0.01)
        assert daemon.daemon.hub.engine.active == 1
    # The client is gone: its generation stops long before its 4000 tokens, and is counted as cancelled.
    deadline = time.time() + 10
    while metric(daemon, "rwkv_hub_cancelled_total") == before and time.time() < deadline:
        time.sleep(0.05)
    assert metric(daemon, "rwkv_hub_cancelled_total") == before + 1
    assert daemon.daemon.hub.engine.active == 0


def test_stop_strings_are_bounded_alike_on_both_protocols(daemon):
    c = client(daemon)
    msgs = [{"role": "user", "content": "hi"}]
    for stop in (["x" * 1001], [f"s{i}" for i in range(17)], [""]):
        with pytest.raises(openai.BadRequestError, match="stop must be") as e:
            c.chat.completions.create(model="x", messages=msgs, max_tokens=2, stop=stop)
        assert e.value.body["param"] == "stop"
    # Sixteen of the user's own, on top of the chat format's hidden ones, are taken.
    r = c.chat.completions.create(model="x", messages=msgs, max_tokens=2, stop=[f"s{i}" for i in range(16)])
    assert r.usage.completion_tokens <= 2
    r = c.completions.create(model="x", prompt="import", max_tokens=3, stop=["y" * 1000])
    assert r.usage.completion_tokens == 3

    async def go(ws):
        out = []
        for stop in ("x" * 1001, ["x" * 1001], ["s"] * 17):
            await ws.send(json.dumps({"type": "generate", "id": "g", "prompt": "x", "params": {"stop": stop}}))
            out.append(json.loads(await ws.recv()))
        return out

    events = ws_run(daemon, go)
    assert [e["code"] for e in events] == ["bad_request"] * 3
    assert "at most 1000 characters" in events[0]["message"] and "at most 16 items" in events[2]["message"]


def test_deep_json_is_refused_and_the_connection_stays_usable(daemon):
    async def go(ws):
        await ws.send('{"type": "hello", "id": "d", "client": ' + "[" * 30_000 + "]" * 30_000 + "}")
        deep = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "hello", "id": "h"}))
        return deep, json.loads(await ws.recv())

    deep, hello = ws_run(daemon, go)
    assert deep["type"] == "error" and deep["code"] == "bad_request" and "deeper than 32" in deep["message"]
    assert hello["type"] == "hello"
    body = ('{"prompt": "x", "metadata": ' + "[" * 5000 + "]" * 5000 + "}").encode()
    status, _, err = request(daemon, "POST", "/v1/completions", body, AUTH)
    assert status == 400 and "deeper than 32" in err["error"]["message"]


def test_bad_types_and_lone_surrogates_are_400s_naming_the_field(daemon):
    c = client(daemon)
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        (lambda: c.completions.create(model="x", prompt="x", max_tokens=2, extra_body={"preset": ["a"]}), "preset"),
        (lambda: c.chat.completions.create(model="x", messages=msgs, extra_body={"format": {"a": 1}}), "format"),
        (lambda: c.completions.create(model="x", prompt="x", stream="yes"), "stream"),
        (lambda: c.completions.create(model="x", prompt="x", n=True), "n"),
    ]
    for call, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            call()
        assert e.value.body["param"] == param and e.value.body["type"] == "invalid_request_error", e.value.body
    # The official client cannot even send a lone surrogate (it encodes the body as UTF-8); JSON escapes can.
    for path, body, param in (
        ("/v1/completions", {"prompt": "a\ud800b", "max_tokens": 2}, "prompt"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "\ud83d"}]}, "messages[0].content"),
    ):
        status, _, err = request(daemon, "POST", path, body, AUTH)
        assert status == 400 and err["error"]["param"] == param and "surrogate" in err["error"]["message"]

    async def go(ws):
        out = []
        for raw in (
            '{"type": "generate", "id": "s1", "prompt": "a\\ud800b"}',
            '{"type": "chat", "id": "s2", "session": "surr", "message": "\\ud83d"}',
        ):
            await ws.send(raw)
            out.append(json.loads(await ws.recv()))
        return out

    events = ws_run(daemon, go)
    assert [(e["id"], e["code"]) for e in events] == [("s1", "bad_request"), ("s2", "bad_request")]
    assert events[0]["message"].startswith("prompt: a lone UTF-16 surrogate")


def test_cors_lets_an_allowed_origin_in_and_keeps_others_out(daemon):
    preflight = {
        "Origin": APP,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    status, headers, _ = request(daemon, "OPTIONS", "/v1/chat/completions", headers=preflight)
    assert status == 204 and headers["Access-Control-Allow-Origin"] == APP
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "authorization" in headers["Access-Control-Allow-Headers"] and headers["Vary"] == "Origin"
    status, headers, body = request(daemon, "GET", "/v1/models", headers=AUTH | {"Origin": APP})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == APP and body["data"]
    status, headers, _ = request(daemon, "GET", "/v1/models", headers={"Origin": APP})  # the page may read errors
    assert status == 401 and headers["Access-Control-Allow-Origin"] == APP
    status, headers, _ = request(
        daemon, "OPTIONS", "/v1/models", headers=preflight | {"Origin": "https://evil.example"}
    )
    assert status == 403 and "Access-Control-Allow-Origin" not in headers


def test_include_usage_echo_and_unsupported_fields(daemon):
    c = client(daemon)
    chunks = list(
        c.chat.completions.create(
            model="x",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 3
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    plain = c.completions.create(model="x", prompt="import", max_tokens=3, temperature=0)
    echoed = c.completions.create(model="x", prompt="import", max_tokens=3, temperature=0, echo=True)
    assert echoed.choices[0].text == "import" + plain.choices[0].text
    parts = list(c.completions.create(model="x", prompt="import", max_tokens=3, temperature=0, echo=True, stream=True))
    assert "".join(p.choices[0].text for p in parts) == echoed.choices[0].text
    with pytest.raises(openai.BadRequestError, match="not supported") as e:
        c.completions.create(model="x", prompt="import", max_tokens=3, suffix="x")
    assert e.value.body["param"] == "suffix"
    assert c.completions.create(model="x", prompt="import", max_tokens=1, logit_bias={}, suffix=None).choices


def test_logit_bias_on_both_protocols(daemon):
    """OpenAI's field (ids as text keys, -100 to 100) and `params.logit_bias` steer the same tokens: the
    model's tokenizer's ids, checked against its vocabulary."""
    c = client(daemon)
    tok = daemon.daemon.hub.engine.model.tokenizer
    greedy = {"model": "x", "prompt": "import", "max_tokens": 1, "temperature": 0}
    first = c.completions.create(**greedy).choices[0].text
    banned = tok.encode(first)[0]
    other = c.completions.create(**greedy, logit_bias={str(banned): -100}).choices[0].text
    assert other and other != first
    forced = tok.encode("Q")[0]
    assert c.completions.create(**greedy, logit_bias={str(forced): 100}).choices[0].text == "Q"
    vocab = daemon.daemon.hub.engine.model.spec.vocab_size
    for bias, words in (
        ({"x": 1}, "not a token id"),
        ({str(vocab): 1}, "outside the vocabulary"),
        ({"1": 500}, "range"),
    ):
        with pytest.raises(openai.BadRequestError, match=words) as e:
            c.completions.create(**greedy, logit_bias=bias)
        assert e.value.body["param"] == "logit_bias"

    async def go(ws):
        out = []
        for bias in ({str(forced): 100}, {"x": 1}):
            params = {"temperature": 0, "max_tokens": 1, "logit_bias": bias}
            await ws.send(json.dumps({"type": "generate", "id": "b", "prompt": "import", "params": params}))
            out.append(await until_done(ws, "b"))
        return out

    (text, done), (_, refused) = ws_run(daemon, go)
    assert text == "Q" and done["type"] == "done"
    assert refused["type"] == "error" and refused["code"] == "bad_request"


def test_http_errors_are_in_openai_shape(daemon):
    c = client(daemon)
    model = c.models.retrieve(daemon.daemon.hub.engine.model.path.stem)
    assert model.id == daemon.daemon.hub.engine.model.path.stem
    with pytest.raises(openai.NotFoundError) as e:
        c.models.retrieve("gpt-4o")
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    cases = [
        ("POST", "/v1/completions", {"prompt": "a" * 70_000}, 413, "too_large"),
        ("GET", "/v1/nothing-here", None, 404, "not_found"),
        ("GET", "/v1/chat/completions", None, 405, "method_not_allowed"),
        ("POST", "/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "bad_request"),
    ]
    for method, path, body, status, code in cases:
        got, headers, err = request(daemon, method, path, body, AUTH)
        assert (got, err["error"]["code"]) == (status, code), err
        assert set(err["error"]) == {"message", "type", "param", "code"}
    assert request(daemon, "GET", "/v1/models")[2]["error"]["type"] == "authentication_error"
    assert request(daemon, "GET", "/v1/models", headers={"Origin": "https://x.example"})[2]["error"]["type"] == (
        "permission_error"
    )
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="x", prompt="x", temperature=9)
    assert e.value.body["param"] == "temperature"


def test_metrics_count_disconnects_closes_and_http_errors(daemon, caplog):
    caplog.set_level(logging.DEBUG)
    idle(daemon)
    names = ("rwkv_hub_cancelled_total", "rwkv_hub_tokens_generated_total", "rwkv_hub_errors_total")
    before = {n: metric(daemon, n) for n in names}
    stream = client(daemon).completions.create(model="x", prompt="def f():", max_tokens=2000, stream=True)
    for n, _ in enumerate(stream, 1):
        if n == 20:
            break
    stream.close()  # the SSE client leaves

    async def vanish(ws):
        await ws.send(json.dumps({"type": "generate", "id": "a", "prompt": "def f():", "params": {"max_tokens": 2000}}))
        for _ in range(10):
            await ws.recv()

    ws_run(daemon, vanish)
    for _ in range(3):
        assert request(daemon, "POST", "/v1/completions", {"prompt": ""}, AUTH)[0] == 400
    deadline = time.time() + 10
    while metric(daemon, names[0]) < before[names[0]] + 2 and time.time() < deadline:
        time.sleep(0.05)
    after = {n: metric(daemon, n) for n in names}
    assert after[names[0]] == before[names[0]] + 2
    assert after[names[1]] >= before[names[1]] + 30
    assert after[names[2]] == before[names[2]] + 3
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # a client leaving is no fault


def test_null_openai_fields_strict_types_and_the_real_caps(daemon):
    c = client(daemon)
    msgs = [{"role": "user", "content": "hi"}]
    nulls = {f: None for f in ("service_tier", "reasoning_effort", "functions", "prompt_cache_key", "verbosity")}
    r = c.chat.completions.create(model="not-our-name", messages=msgs, max_tokens=1, n=None, extra_body=nulls)
    assert r.model == daemon.daemon.hub.engine.model.path.stem  # any model name is served by the one model
    status, _, body = request(
        daemon, "GET", "/v1/models", headers={"Authorization": f"bearer {TOKEN}"}
    )  # RFC 7235: the scheme is case-insensitive
    assert status == 200 and body["data"]
    with pytest.raises(openai.BadRequestError, match="1 to 4096") as e:
        c.completions.create(model="x", prompt="x", max_tokens=10**9)
    assert e.value.body["code"] == "too_long" and e.value.body["param"] == "max_tokens"

    async def go(ws):
        await ws.send(json.dumps({"type": "generate", "id": "m", "prompt": "x", "params": {"max_tokens": 10**9}}))
        return json.loads(await ws.recv())

    ev = ws_run(daemon, go)
    assert ev["code"] == "too_long" and "1 to 4096" in ev["message"]


def test_a_burst_of_completions_for_one_document_keeps_the_newest(daemon):
    """More completions for one document than the per-connection limit, none cancelled by the client: each
    supersedes the one before, so the newest is never refused as busy."""

    async def go(ws):
        params = {"max_tokens": 400, "stop": [], "temperature": 1.0}
        msgs = [
            {"type": "complete", "id": f"c{i}", "prefix": "x = 1\n", "path": "a.py", "params": params} for i in range(8)
        ]
        await ws.send(json.dumps(msgs[0]))
        await ws.recv()  # c0 is streaming
        for m in msgs[1:]:
            await ws.send(json.dumps(m))
        ends = {}
        while len(ends) < len(msgs):
            ev = json.loads(await ws.recv())
            if ev["type"] in ("done", "error"):
                ends[ev["id"]] = ev
        return ends

    ends = ws_run(daemon, go)
    assert ends["c7"]["type"] == "done" and ends["c7"]["finish_reason"] in ("length", "stop"), ends["c7"]
    assert all(ends[f"c{i}"].get("finish_reason") == "cancelled" for i in range(7)), ends


def test_busy_is_503_with_retry_after_and_a_stop_is_no_complete_answer(model_factory, checkpoint_factory, tmp_path):
    """A small daemon of its own: one slot, one queue place; then it stops (as on SIGTERM) mid-answer."""
    model = model_factory(checkpoint_factory(**SHAPE))
    server = DaemonThread()
    config = Config(port=0, limits=Limits(max_active=1, max_queue=1))
    running = server.start(server.hub(model, tmp_path, limits=config.limits.engine()), config, TOKEN)
    try:
        c = client(running)
        long = [c.completions.create(model="x", prompt="a", max_tokens=4000, stream=True) for _ in range(2)]
        status, headers, err = request(running, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2}, AUTH)
        assert status == 503 and headers["Retry-After"] == "1"
        assert (err["error"]["type"], err["error"]["code"]) == ("server_error", "busy")
        for s in long:
            s.close()
        engine = running.daemon.hub.engine
        deadline = time.time() + 20
        while (engine.active or engine.queued) and time.time() < deadline:
            time.sleep(0.02)
        chat = c.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=4000, stream=True
        )
        seen = [next(chat), next(chat)]
        engine.request_stop()  # what SIGTERM does
        with pytest.raises(openai.APIError) as e:
            seen += list(chat)
        assert e.value.code == "cancelled"
        assert all(ch.choices[0].finish_reason is None for ch in seen)
    finally:
        server.stop(running).result(60)
        server.close()


def test_a_chat_may_start_a_new_session_from_an_initial_state(daemon, tmp_path):
    """`chat` with a session not yet made and `initial_state`: the session starts from that state (it was
    refused, with an empty session left behind); an existing session keeps its own state."""
    import torch

    from rwkv_hub.core.sessions import load_tuned_state
    from rwkv_hub.hub.plugins import InitialState, Registered

    hub = daemon.daemon.hub
    model = hub.engine.model
    shape = model.state_shape
    tuned = {
        f"blocks.{i}.att.time_state": torch.randn(shape.n_head, shape.head_size, shape.head_size)
        for i in range(shape.n_layer)
    }
    torch.save(tuned, tmp_path / "persona.pth")
    hub.host.registry["initial_states"]["persona-test"] = Registered(
        InitialState("persona-test", str(tmp_path / "persona.pth"), ""), "tests", "config"
    )
    params = {"max_tokens": 4, "temperature": 0}

    async def go(ws):
        out = []
        for sid in ("persona-new", "persona-new"):
            msg = {"type": "chat", "id": "p", "session": sid, "initial_state": "persona-test", "message": "hi"}
            await ws.send(json.dumps(msg | {"params": params}))
            out.append(await until_done(ws, "p"))
        await ws.send(json.dumps({"type": "chat", "id": "q", "session": "no-persona", "initial_state": "nope"}))
        out.append(await until_done(ws, "q"))
        return out

    try:
        (text, done), (_, again), (_, unknown) = ws_run(daemon, go)
        assert done["type"] == "done", done
        initial = load_tuned_state(tmp_path / "persona.pth", shape)
        gen = model.generate("User: hi\n\nAssistant:", state=initial, temperature=0, max_tokens=4, stop=("\n\n",))
        assert text == "".join(gen).strip()
        assert again["type"] == "error" and "already has its state" in again["message"]
        assert unknown["type"] == "error" and "no-persona" not in hub.engine.sessions
    finally:
        del hub.host.registry["initial_states"]["persona-test"]
        for sid in ("persona-new",):
            if sid in hub.engine.sessions:
                hub.engine.sessions.delete(sid)


def test_initial_state_is_refused_on_session_operations_that_ignore_it(daemon):
    async def go(ws):
        await ws.send(json.dumps({"type": "sessions.reset", "id": "r", "session": "x", "initial_state": "y"}))
        return json.loads(await ws.recv())

    event = ws_run(daemon, go)
    assert event["type"] == "error" and event["code"] == "bad_request" and "initial_state" in event["message"]
