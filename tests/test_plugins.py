"""The plugin system: every hook exercised by a real plugin, faults contained, precedence, and the CLI.

Plugins under tests/plugins/ are loaded as config modules (`plugins.good_plugin`, ...), exactly as a
user's config file names them.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import types
import urllib.request
from pathlib import Path

import openai
import pytest
import websockets
from conftest import DaemonThread

from rwkv_hub import hookimpl, hookspecs
from rwkv_hub.core.engine import Engine
from rwkv_hub.core.sessions import SessionStore
from rwkv_hub.hub.completion import CompletionError, CompletionFormat
from rwkv_hub.hub.config import Config
from rwkv_hub.hub.formats import FormatError, PromptFormat, Rendered
from rwkv_hub.hub.hub import Hub, RequestError
from rwkv_hub.hub.plugins import PluginError, PluginHost, PluginTimeout
from rwkv_hub.hub.presets import PresetError

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(n for n, f in vars(hookspecs).items() if inspect.isfunction(f) and hasattr(f, "rwkv_hub_spec"))
GOOD = "plugins.good_plugin"
ALL_BAD = ["plugins.broken_import", "plugins.bad_registration", "plugins.misspelled", "plugins.raising_hook"]


def host(*modules: str, **kw) -> PluginHost:
    return PluginHost(modules, entry_points=False, **kw).load()


@pytest.fixture
def good():
    from plugins import good_plugin

    good_plugin.CALLS.clear()
    return good_plugin


@pytest.fixture(scope="module")
def model(model_factory):
    from rwkv_hub.core.builtin import BUILTIN_MODEL

    return model_factory(BUILTIN_MODEL) if BUILTIN_MODEL.exists() else None


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


@pytest.fixture
def inline(monkeypatch):
    """`inline(name, *hooks)`: a plugin module made of hook functions (each named after its hook), importable
    under `name` for this test, so a host loads it as a config file's plugin."""

    def make(name: str, *hooks) -> str:
        module = types.ModuleType(name)
        for fn in hooks:
            setattr(module, fn.__name__, hookimpl(fn))
        monkeypatch.setitem(sys.modules, name, module)
        return name

    return make


SCRIPT = "  hi there  "  # what the `script` logit processor makes the model write, then dots


def register_logit_processors(register):
    """Offers `script`: the model writes SCRIPT, whatever it would have written."""

    def script(tokens, logits):
        out = logits.clone().fill_(-1e9)
        out[ord(SCRIPT[len(tokens)]) if len(tokens) < len(SCRIPT) else ord(".")] = 0.0
        return out

    register("script", script)


def scripted(**fields) -> dict:
    """A request whose generation is SCRIPT exactly (byte tokens: one per character)."""
    return fields | {"params": {"max_tokens": len(SCRIPT)}, "logit_processors": ["script"]}


# --- every hook ---------------------------------------------------------------------------------------------


def test_initial_state_from_a_plugin_reaches_the_engine(good, model, tmp_path):
    if model is None:
        pytest.skip("the built-in model is not there")
    import torch

    from rwkv_hub.core.sessions import load_tuned_state
    from rwkv_hub.hub.plugins import InitialState, Registered

    shape = model.state_shape
    tuned = {
        f"blocks.{i}.att.time_state": torch.randn(shape.n_head, shape.head_size, shape.head_size)
        for i in range(shape.n_layer)
    }
    torch.save(tuned, tmp_path / "persona.pth")
    h = host(GOOD)
    with pytest.raises(Exception, match="no such state file"):  # the plugin's path does not exist
        Hub(Engine(model), h).initial_state("pirate")
    h.registry["initial_states"]["persona"] = Registered(
        InitialState("persona", str(tmp_path / "persona.pth"), ""), GOOD, "config"
    )

    async def go():
        async with Engine(model) as engine:
            s = Hub(engine, h).submit(
                {"input": {"input": "hi"}, "initial_state": "persona", "params": {"max_tokens": 6, "temperature": 0}}
            )
            await s.text()
            return s

    s = run(go())
    initial = load_tuned_state(tmp_path / "persona.pth", shape)
    gen = model.generate("User: hi\n\nAssistant:", state=initial, temperature=0, max_tokens=6, stop=("\n\n",))
    "".join(gen)
    assert s.result.tokens == gen.result.tokens


def test_registration_hooks(good):
    h = host(GOOD)
    assert h.failures == []
    assert h.formats["shout"].render.__name__ == "_shout"  # register_formats
    assert h.presets["calm"].params == {"temperature": 0.5} and h.presets["calm"].format == "shout"  # register_presets
    assert h.commands["hello"].help == "say hello"  # register_commands
    assert h.initial_states["pirate"].description == "talks like a pirate"  # register_initial_states
    assert "only-x" in h.logit_processors  # register_logit_processors
    assert h.stream_filters["x-to-y"]()("xax") == "yay"  # register_stream_filters
    assert h.bots["quiet"].description == "says nothing" and h.bots["quiet"].factory.__name__ == "QuietBot"
    info = {p["name"]: p for p in h.report()["plugins"]}[GOOD]
    assert info["source"] == "config" and set(info["hooks"]) == set(HOOKS)


def test_daemon_started_and_daemon_stopping(good):
    h = host(GOOD)
    h.call("daemon_started", hub="the hub")
    h.call("daemon_stopping", hub="the hub")
    assert good.CALLS == [("daemon_started", "the hub"), ("daemon_stopping", "the hub")]


def test_prepare_request_generation_finished_logit_processors_and_stream_filters(good, model):
    if model is None:
        pytest.skip("the built-in model is not there")
    h = host(GOOD)

    async def go():
        async with Engine(model) as engine:
            hub = Hub(engine, h)
            s = hub.submit(
                {
                    "preset": "calm",
                    "input": {"input": "abc"},
                    "params": {"max_tokens": 50, "seed": 1},
                    "logit_processors": ["only-x"],
                    "stream_filters": ["x-to-y"],
                }
            )
            text = await s.text()
            await asyncio.sleep(0.05)  # generation_finished runs on the loop just after the stream ends
            return s, text

    s, text = run(go())
    assert s.request["format"] == "shout" and s.request["prompt"] == "ABC\n"  # the preset's format
    assert s.request["params"]["max_tokens"] == 7  # prepare_request lowered it
    assert s.request["params"]["top_p"] == 0.9 and s.request["params"]["temperature"] == 0.5
    assert text == "y" * 7  # only "x" allowed by the processor, "x" shown as "y" by the filter
    assert good.CALLS == [("prepare_request", "shout"), ("generation_finished", 7)]


# --- faults stay with the plugin ------------------------------------------------------------------------------


def test_broken_plugins_are_reported_and_skipped(good):
    h = host(*ALL_BAD, GOOD)
    assert {(f.plugin, f.stage) for f in h.failures} == {
        ("plugins.broken_import", "import"),
        ("plugins.bad_registration", "register_formats"),
        ("plugins.bad_registration", "register_presets"),
        ("plugins.misspelled", "hooks"),
    }
    assert "shout" in h.formats and "chat" in h.formats  # the others still load
    assert "oops" not in h.presets
    errors = " ".join(f.error for f in h.failures)
    assert "not installed" in errors and "register_format" in errors
    h.call("prepare_request", request={"params": {}, "format": "chat"})
    assert any(f.plugin == "plugins.raising_hook" and f.stage == "prepare_request" for f in h.failures)


def test_strict_mode_turns_faults_into_errors():
    with pytest.raises(PluginError, match="plugins.broken_import"):
        host("plugins.broken_import", strict=True)


def test_allow_list_and_empty_allow_list():
    assert "plugins.good_plugin" not in host(GOOD, allow=[]).plugins
    h = host(GOOD, "plugins.broken_import", allow=[GOOD])
    assert GOOD in h.plugins and h.failures == []


def test_a_failing_request_hook_does_not_fail_the_request(model):
    if model is None:
        pytest.skip("the built-in model is not there")
    h = host("plugins.raising_hook")

    async def go():
        async with Engine(model) as engine:
            s = Hub(engine, h).submit({"input": {"input": "hi"}, "params": {"max_tokens": 3}})
            await s.text()
            await asyncio.sleep(0.05)
            return s

    s = run(go())
    assert s.result.completion_tokens == 3
    assert {f.stage for f in h.failures} == {"prepare_request", "generation_finished"}


def test_completion_formats_are_chosen_by_language_and_contained(good, model):
    if model is None:
        pytest.skip("the built-in model is not there")
    h = host(GOOD, "plugins.bad_registration")
    assert h.completion_format(None, "lua").name == "fim"  # claimed for Lua by the plugin
    assert h.completion_format(None, "python").name == "prefix"  # nobody claims Python: the built-in
    assert h.completion_format("fim", "python").name == "fim"  # a request may name any format
    with pytest.raises(CompletionError, match="unknown completion format 'nope'; known: broken, fim, prefix"):
        h.completion_format("nope")

    async def go():
        async with Engine(model) as engine:
            hub = Hub(engine, h)
            s = hub.complete({"prefix": "local x = 1\n", "suffix": "return x\n", "language": "lua"})
            await s.text()
            # A plugin's code runs when the stream starts (off the event loop), so its failure comes from there.
            broken = "completion format 'broken' failed: ValueError: no idea.*plugins.bad_registration"
            with pytest.raises(CompletionError, match=broken):
                await hub.complete({"prefix": "IDENTIFICATION DIVISION.\n", "language": "cobol"}).text()
            with pytest.raises(CompletionError, match="no text before the cursor"):
                await hub.complete({"prefix": "", "language": "python"}).start()
            return s

    s = run(go())
    assert s.request["prompt"] == "<PRE>local x = 1\n<SUF>return x\n<MID>"
    assert s.request["params"]["temperature"] == 0 and "<EOT>" in s.request["params"]["stop"]


def test_config_plugin_overrides_built_in_with_a_warning():
    h = host("plugins.clashing")
    assert h.formats["chat"].description == "my chat"
    assert any("'chat'" in w and "plugins.clashing" in w for w in h.warnings)


def test_bad_format_defaults_and_a_preset_for_a_missing_format_are_refused_when_the_plugin_loads(inline):
    def register_formats(register):
        register(PromptFormat("bad-defaults", "", lambda i: Rendered("x"), defaults={"top_p": "high", "bogus": 1}))
        register(PromptFormat("out-of-range", "", lambda i: Rendered("x"), defaults={"top_p": 7}))
        register(PromptFormat("fine", "", lambda i: Rendered("x"), defaults={"top_p": 0.5}))

    def register_presets(register):
        register({"name": "ghost", "description": "d", "format": "no-such-format"})
        register({"name": "for-fine", "description": "d", "format": "fine"})

    h = host(inline("p.entries", register_formats, register_presets))
    assert "fine" in h.formats and "for-fine" in h.presets  # the plugin's good entries stay
    assert "bad-defaults" not in h.formats and "out-of-range" not in h.formats and "ghost" not in h.presets
    errors = {(f.stage, f.error) for f in h.failures if f.plugin == "p.entries"}
    assert any(st == "register_formats" and "'bad-defaults'" in e and "top_p" in e for st, e in errors)
    assert any(st == "register_formats" and "'out-of-range'" in e and "out of range" in e for st, e in errors)
    assert (
        "register_presets",
        "PresetError: preset 'ghost' names format 'no-such-format', which no plugin registers",
    ) in errors


def test_a_prepare_request_that_raises_leaves_no_change_behind(inline, model):
    if model is None:
        pytest.skip("the built-in model is not there")

    def prepare_request(request):
        request["prompt"] = "CORRUPTED BY PLUGIN"
        request["params"]["max_tokens"] = 1
        raise RuntimeError("blew up after changing the request")

    h = host(inline("p.mutate", prepare_request), GOOD)  # the good plugin's change (max_tokens 7) still counts

    async def go():
        async with Engine(model) as engine:
            s = Hub(engine, h).submit({"format": "raw", "input": {"text": "abc"}, "params": {"max_tokens": 20}})
            await s.text()
            return s

    s = run(go())
    assert s.request["prompt"] == "abc" and s.request["params"]["max_tokens"] == 7
    assert s.result.completion_tokens == 7
    assert [(f.plugin, f.stage) for f in h.failures] == [("p.mutate", "prepare_request")]


def test_a_prepare_request_that_leaves_a_malformed_request_is_the_plugins_fault(inline, model):
    if model is None:
        pytest.skip("the built-in model is not there")

    def prepare_request(request):
        text = request["input"]["text"]
        if text == "bad type":
            request["params"]["temperature"] = "hot"
        if text == "int prompt":
            request["prompt"] = 12345
        if text == "out of range":
            request["params"]["top_p"] = 7

    h = host(inline("p.malformed", prepare_request))

    async def go():
        async with Engine(model) as engine:
            hub = Hub(engine, h)
            out = []
            for text in ("bad type", "int prompt", "out of range"):
                s = hub.submit({"format": "raw", "input": {"text": text}, "params": {"max_tokens": 2}})
                await s.text()
                out.append((s.request["prompt"], s.request["params"].get("temperature"), s.result.completion_tokens))
            return out

    assert run(go()) == [("bad type", None, 2), ("int prompt", None, 2), ("out of range", None, 2)]
    [failure] = h.failures  # one entry per plugin and stage, counted
    assert (failure.plugin, failure.stage, failure.count) == ("p.malformed", "prepare_request", 3)
    assert "top_p" in failure.error  # the latest


def test_slow_plugin_code_does_not_stall_the_event_loop_and_its_request_fails_in_time(inline, model):
    if model is None:
        pytest.skip("the built-in model is not there")
    release = threading.Event()

    def prepare_request(request):
        if request["prompt"] == "slow":
            release.wait(5)

    def slow_render(inp):
        release.wait(5)
        return Rendered(inp.input)

    def slow_build(ctx):
        release.wait(5)

    def register_formats(register):
        register(PromptFormat("slow", "", slow_render))

    def register_completion_formats(register):
        register(CompletionFormat("slow-fim", "", slow_build))

    plugin = inline("p.slow", prepare_request, register_formats, register_completion_formats)
    h = host(plugin, timeout_s=0.5)

    async def go():
        async with Engine(model) as engine:
            hub = Hub(engine, h)
            t0 = time.perf_counter()
            slow = [
                asyncio.create_task(hub.submit({"format": "raw", "input": {"text": "slow"}}).text()),
                asyncio.create_task(hub.submit({"format": "slow", "input": {"input": "x"}}).text()),
                asyncio.create_task(hub.complete({"prefix": "x = ", "format": "slow-fim"}).text()),
            ]
            fast = hub.submit({"format": "raw", "input": {"text": "fast"}, "params": {"max_tokens": 3}})
            await fast.text()
            fast_s = time.perf_counter() - t0
            errors = [(type(e), str(e)) for e in await asyncio.gather(*slow, return_exceptions=True)]
            slow_s = time.perf_counter() - t0
            release.set()
            return fast, fast_s, errors, slow_s

    fast, fast_s, errors, slow_s = run(go())
    assert fast.result.completion_tokens == 3 and fast_s < 0.45  # served while the slow code still ran
    assert 0.5 <= slow_s < 2.5
    assert errors == [
        (PluginTimeout, f"plugin p.slow did not return from {stage} within 0.5 s; the request was not run")
        for stage in ("prepare_request", "format 'slow' render", "completion format 'slow-fim' build")
    ]
    assert {(f.plugin, f.stage) for f in h.failures} == {
        ("p.slow", "prepare_request"),
        ("p.slow", "format 'slow' render"),
        ("p.slow", "completion format 'slow-fim' build"),
    }


def test_a_broken_format_fails_its_request_naming_the_plugin(inline, model):
    if model is None:
        pytest.skip("the built-in model is not there")

    def register_formats(register):
        register(PromptFormat("keyerror", "render raises", lambda i: {}["boom"]))
        register(PromptFormat("plain-str", "render returns text", lambda i: "not Rendered"))
        register(PromptFormat("str-stop", "render's stop is one string", lambda i: Rendered("x", "\n")))

    h = host(inline("p.formats", register_formats))

    async def go():
        async with Engine(model) as engine:
            hub = Hub(engine, h)
            for name, why in [
                ("keyerror", "KeyError: 'boom'"),
                ("plain-str", "TypeError: render returned str, not a Rendered"),
                ("str-stop", "TypeError: render returned stop='\\\\n'"),
            ]:
                with pytest.raises(FormatError, match=rf"format '{name}' failed: {why}.*\(plugin p\.formats\)"):
                    await hub.submit({"format": name, "input": {"input": "x"}}).text()

    run(go())
    assert [(f.plugin, f.stage) for f in h.failures] == [
        ("p.formats", "format 'keyerror' render"),
        ("p.formats", "format 'plain-str' render"),
        ("p.formats", "format 'str-stop' render"),
    ]


def test_a_stream_filter_that_returns_no_text_or_raises_is_dropped_for_that_stream(inline, model):
    if model is None:
        pytest.skip("the built-in model is not there")

    def register_stream_filters(register):
        register("five", lambda: lambda delta: 5)
        register("raises", lambda: lambda delta: 1 / 0)
        register("upper", lambda: str.upper)

    h = host(inline("p.filters", register_stream_filters, register_logit_processors))

    async def go():
        async with Engine(model) as engine:
            hub = Hub(engine, h)
            s = hub.submit(scripted(format="raw", input={"text": "x"}, stream_filters=["five", "raises", "upper"]))
            return [d async for d in s]

    deltas = run(go())
    assert all(isinstance(d, str) for d in deltas) and "".join(deltas) == SCRIPT.upper()
    stages = [(f.stage, f.count) for f in h.failures]
    assert stages == [("stream filter 'five'", 1), ("stream filter 'raises'", 1)]  # dropped after the first delta


def test_a_hook_that_fails_every_time_is_counted_not_logged_every_time(inline, caplog):
    def generation_finished(request, result):
        raise RuntimeError("always")

    h = host(inline("p.always", generation_finished))
    with caplog.at_level(logging.WARNING, logger="rwkv_hub"):
        for _ in range(12):
            h.call("generation_finished", request={}, result={})
    [failure] = h.failures
    assert (failure.stage, failure.count) == ("generation_finished", 12)
    logged = [r.getMessage() for r in caplog.records if "p.always" in r.getMessage()]
    assert len(logged) == 2  # the first in full, then at the tenth
    assert "failed in generation_finished: RuntimeError: always; it is called again the next time" in logged[0]
    assert "has failed in generation_finished 10 times" in logged[1]


def test_names_that_are_not_text_are_refused_with_a_request_error(model):
    if model is None:
        pytest.skip("the built-in model is not there")
    h = host()

    async def go():
        async with Engine(model) as engine:
            hub = Hub(engine, h)
            with pytest.raises(PresetError, match="preset must be a preset name \\(text\\), not list"):
                hub.submit({"preset": ["a"], "input": {"input": "x"}})
            with pytest.raises(FormatError, match="format must be a format name \\(text\\), not dict"):
                hub.submit({"format": {"a": 1}, "input": {"input": "x"}})
            with pytest.raises(RequestError, match="stream_filters must be a list of names, not str"):
                hub.submit({"input": {"input": "x"}, "stream_filters": "abc"})
            with pytest.raises(RequestError, match=r"logit_processors\[0\] must be a name \(text\), not dict"):
                hub.submit({"input": {"input": "x"}, "logit_processors": [{"a": 1}]})
            with pytest.raises(RequestError, match="session must be a session id"):
                hub.submit({"input": {"input": "x"}, "session": ["s"]})

    run(go())


# --- answers, as the format reads them -----------------------------------------------------------------------


def test_answers_are_read_by_the_format_and_streamed_to_match(inline, model):
    if model is None:
        pytest.skip("the built-in model is not there")

    def register_formats(register):
        register(
            PromptFormat("marked", "", lambda i: Rendered("Q: " + i.input), read_answer=lambda s: "READ:" + s.strip())
        )

    h = host(inline("p.answers", register_logit_processors))
    h2 = host(inline("p.marked", register_formats, register_logit_processors))

    async def go():
        async with Engine(model) as engine:
            hub, out = Hub(engine, h), {}
            for name, fields in [
                ("chat", {"input": {"input": "hi"}}),
                ("raw", {"format": "raw", "input": {"text": "x"}}),
            ]:
                s = hub.submit(scripted(**fields))
                deltas = [d async for d in s]
                out[name] = deltas, s.result.text
                out[name + " text"] = await hub.submit(scripted(**fields)).text()
            # An editor completion keeps its leading space (the demo model answers "Assistant:" with one).
            out["complete"] = await hub.complete({"prefix": "User: hi\n\nAssistant:", "language": "plaintext"}).text()
            s = Hub(engine, h2).submit(scripted(format="marked", input={"input": "x"}))
            out["marked"] = (
                [d async for d in s],
                await Hub(engine, h2).submit(scripted(format="marked", input={"input": "x"})).text(),
            )
            return out

    out = run(go())
    deltas, raw = out["chat"]
    assert raw == SCRIPT and len(deltas) > 1 and "".join(deltas) == SCRIPT.strip() == out["chat text"]
    deltas, raw = out["raw"]
    assert "".join(deltas) == SCRIPT == raw == out["raw text"]  # raw: verbatim
    assert out["complete"].startswith(" ") and out["complete"].strip()
    deltas, text = out["marked"]
    assert "".join(deltas) == SCRIPT and text == "READ:" + SCRIPT.strip()  # a custom reader: deltas as generated


def test_a_read_answer_that_fails_gives_the_text_as_generated(inline, model):
    if model is None:
        pytest.skip("the built-in model is not there")

    def register_formats(register):
        register(PromptFormat("raises", "", lambda i: Rendered(i.input), read_answer=lambda s: 1 / 0))
        register(PromptFormat("int", "", lambda i: Rendered(i.input), read_answer=len))

    h = host(inline("p.readers", register_formats, register_logit_processors))

    async def go():
        async with Engine(model) as engine:
            hub = Hub(engine, h)
            return [await hub.submit(scripted(format=f, input={"input": "x"})).text() for f in ("raises", "int")]

    assert run(go()) == [SCRIPT, SCRIPT]
    assert [(f.stage, f.error.split(":")[0]) for f in h.failures] == [
        ("format 'raises' read_answer", "ZeroDivisionError"),
        ("format 'int' read_answer", "TypeError"),
    ]


def test_through_the_daemon_a_slow_hook_leaves_others_served_and_answers_are_read(inline, model, tmp_path):
    if model is None:
        pytest.skip("the built-in model is not there")
    release, finished = threading.Event(), []

    def prepare_request(request):
        if request["input"].get("input") == "slow":
            release.wait(5)

    def generation_finished(request, result):
        finished.append(result["text"])

    def register_formats(register):
        register(PromptFormat("keyerror", "render raises", lambda i: {}["boom"]))

    plugin = inline("p.daemon", prepare_request, generation_finished, register_formats, register_logit_processors)
    server = DaemonThread()
    hub = server.hub(model, tmp_path)
    hub.host = PluginHost([plugin], entry_points=False, timeout_s=1.0).load()
    token = "test-token-0123456789"
    running = server.start(hub, Config(port=0), token)
    try:

        async def ws_go():
            url = running.url.replace("http", "ws", 1) + "/ws"
            async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                await ws.send(json.dumps({"type": "chat", "id": "slow", "message": "slow"}))
                t0 = time.perf_counter()
                health = await asyncio.to_thread(urllib.request.urlopen, running.url + "/health", timeout=10)
                health_s = time.perf_counter() - t0
                for rid, extra in [
                    ("script", scripted(message="hi")),
                    ("broken", {"message": "x", "format": "keyerror"}),
                ]:
                    await ws.send(json.dumps({"type": "chat", "id": rid} | extra))
                events: dict[str, list] = {}
                while len([e for evs in events.values() for e in evs if e["type"] in ("done", "error")]) < 3:
                    ev = json.loads(await ws.recv())
                    events.setdefault(ev["id"], []).append(ev)
                release.set()
                return health.status, health_s, events

        status, health_s, events = asyncio.run(asyncio.wait_for(ws_go(), 60))
        assert status == 200 and health_s < 0.5  # the event loop was free while the hook slept
        [slow] = events["slow"]
        assert (
            slow["type"] == "error"
            and "plugin p.daemon did not return from prepare_request within 1 s" in slow["message"]
        )
        assert "".join(e["text"] for e in events["script"] if e["type"] == "delta") == SCRIPT.strip()
        [broken] = events["broken"]
        assert broken["code"] == "bad_request" and "format 'keyerror' failed: KeyError" in broken["message"]
        assert "p.daemon" in broken["message"]

        c = openai.OpenAI(base_url=running.url + "/v1", api_key=token, max_retries=0, timeout=60)
        reply = c.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=12)
        time.sleep(0.1)  # generation_finished runs in its own thread just after the stream ends
        assert finished[-1].startswith(" ") and reply.choices[0].message.content == finished[-1].strip()
        done = c.completions.create(model="x", prompt="User: hi\n\nAssistant:", max_tokens=5)
        assert done.choices[0].text.startswith(" ")  # a completion's text is verbatim
    finally:
        release.set()
        server.stop(running).result(60)
        server.close()


# --- requests through the hub ---------------------------------------------------------------------------------


def test_request_precedence_and_errors(model):
    if model is None:
        pytest.skip("the built-in model is not there")
    h = host()

    async def go():
        async with Engine(model, sessions=SessionStore(model.state_shape)) as engine:
            hub = Hub(engine, h)
            r = hub.render({"preset": "creative", "params": {"temperature": 0.9}, "input": {"input": "hi"}})
            assert r["format"] == "chat" and r["prompt"] == "User: hi\n\nAssistant:"
            assert r["params"]["temperature"] == 0.9 and r["params"]["top_p"] == 0.5  # request > preset
            assert h.format("chat").defaults["top_p"] == 0.3  # the format default, overridden by the preset
            assert r["params"]["stop"] == ("\n\n",)
            with pytest.raises(RequestError, match="unknown request field 'formt'"):
                hub.render({"formt": "chat"})
            with pytest.raises(PresetError, match="unknown preset 'nope'"):
                hub.render({"preset": "nope"})
            with pytest.raises(PresetError, match="unknown parameter 'temprature'"):
                hub.render({"params": {"temprature": 1}, "input": {"input": "x"}})
            with pytest.raises(RequestError, match="out of range"):
                hub.submit({"params": {"top_p": 2}, "input": {"input": "x"}})
            with pytest.raises(RequestError, match="unknown logit processor"):
                hub.submit({"input": {"input": "x"}, "logit_processors": ["nope"]})
            with pytest.raises(RequestError, match="unknown initial state 'nope'"):
                hub.submit({"input": {"input": "x"}, "initial_state": "nope"})
            engine.sessions.create("s")
            first = hub.submit({"input": {"input": "hi"}, "session": "s", "params": {"max_tokens": 5}})
            await first.text()
            assert first.result.finish_reason == "length"  # cut short: the state has not read a turn end
            tail = engine.sessions.get("s").tail
            second = hub.render({"input": {"input": "more"}, "session": "s"})
            missing = "\n" if tail.endswith("\n") else "\n\n"  # the turn end, not glued onto the reply
            assert second["prompt"] == missing + "User: more\n\nAssistant:"  # continuing: no preamble again
            engine.sessions.get("s").tail = "done.\n\n"
            assert hub.render({"input": {"input": "more"}, "session": "s"})["prompt"] == "User: more\n\nAssistant:"

    run(go())


# --- meta: every hook is tested and documented ---------------------------------------------------------------


def test_every_hook_has_a_test():
    source = Path(__file__).read_text()
    tests = " ".join(re.findall(r"def (test_\w+)", source))
    for hook in HOOKS:
        assert hook in tests or hook.replace("register_", "") in source, f"no test exercises {hook}"


def test_every_hook_is_documented_with_its_signature():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    for hook in HOOKS:
        params = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
        assert f"`{hook}({params})`" in doc, f"docs/plugins.md does not document {hook}({params})"


# --- the command line ---------------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rwkv_hub", *args], capture_output=True, text=True, timeout=60)


def test_cli_lists_plugins_formats_and_presets_without_torch():
    r = cli("plugins", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["plugins"][0]["name"] == "builtin" and report["failures"] == []
    assert "chat" in cli("formats").stdout
    presets = json.loads(cli("presets", "--json").stdout)["presets"]
    assert {p["name"] for p in presets} >= {"chat", "creative", "precise", "keywords", "novel"}
    assert all(p["description_zh"] for p in presets)
    t = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "rwkv_hub", "presets"], capture_output=True, text=True, timeout=60
    )
    assert " torch\n" not in t.stderr and "| torch" not in t.stderr


def test_cli_render_shows_the_exact_prompt():
    turns = ["--user", "hi\n\n\nthere", "--assistant", "hello", "--user", "ok?"]
    r = cli("formats", "render", "chat", "--system", "Be brief.", *turns, "--json")
    assert json.loads(r.stdout) == {
        "format": "chat",
        "prompt": "System: Be brief.\n\nUser: hi\nthere\n\nAssistant: hello\n\nUser: ok?\n\nAssistant:",
        "stop": ["\n\n"],
    }
    bad = cli("formats", "render", "instruction")
    assert bad.returncode == 2 and bad.stderr.startswith("rwkv-hub: error: the instruction format needs")


def test_cli_runs_a_plugin_command_and_reports_broken_plugins():
    # Config modules come from the config file (issue 7); here the host is built with them directly.
    code = (
        "import sys; from rwkv_hub.cli import build_parser; from rwkv_hub.hub.plugins import PluginHost;"
        "h = PluginHost(['plugins.good_plugin', 'plugins.broken_import'], entry_points=False).load();"
        "a = build_parser(h).parse_args(sys.argv[1:]); sys.exit(a.run(a))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    r = subprocess.run([sys.executable, "-c", code, "hello", "world"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout == "hello world\n"
    assert "plugins.broken_import" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-c", code, "plugins"], capture_output=True, text=True, env=env)
    assert "FAILED plugins.broken_import (config) in import" in r.stdout


def test_cli_render_of_a_broken_plugin_format_prints_one_line():
    code = (
        "import sys, types; from rwkv_hub import hookimpl; from rwkv_hub.cli import main;"
        "from rwkv_hub.hub.formats import PromptFormat; from rwkv_hub.hub import plugins;"
        "m = types.ModuleType('broken_fmt'); sys.modules['broken_fmt'] = m;"
        "m.register_formats = hookimpl(lambda register: register(PromptFormat('boom', '', lambda i: {}['k'])));"
        "host = plugins.PluginHost(['broken_fmt'], entry_points=False).load();"
        "plugins.PluginHost.load = lambda self: host; sys.exit(main(sys.argv[1:]))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "formats", "render", "boom", "--input", "x"], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == ["rwkv-hub: error: format 'boom' failed: KeyError: 'k' (plugin broken_fmt)"]


def test_disabling_a_name_no_plugin_has_is_a_warning_not_silence():
    h = host(GOOD, disable=["plugins.good_plugn"])  # a typo: the plugin still loads, and the typo is named
    assert "calm" in h.presets
    assert any("'plugins.good_plugn'" in w and "nothing was disabled" in w for w in h.warnings)
    assert not any("disable" in w for w in host(GOOD, disable=[GOOD]).warnings)
