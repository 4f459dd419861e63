"""The plugin system: every hook exercised by a real plugin, faults contained, precedence, and the CLI.

Plugins under tests/plugins/ are loaded as config modules (`plugins.good_plugin`, ...), exactly as a
user's config file names them.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rwkv_hub import hookspecs
from rwkv_hub.core.engine import Engine
from rwkv_hub.core.sessions import SessionStore
from rwkv_hub.hub.completion import CompletionError
from rwkv_hub.hub.hub import Hub, RequestError
from rwkv_hub.hub.plugins import PluginError, PluginHost
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
            with pytest.raises(CompletionError, match="completion format 'broken' failed: ValueError: no idea"):
                hub.complete({"prefix": "IDENTIFICATION DIVISION.\n", "language": "cobol"})
            with pytest.raises(CompletionError, match="no text before the cursor"):
                hub.complete({"prefix": "", "language": "python"})
            return s

    s = run(go())
    assert s.request["prompt"] == "<PRE>local x = 1\n<SUF>return x\n<MID>"
    assert s.request["params"]["temperature"] == 0 and "<EOT>" in s.request["params"]["stop"]


def test_config_plugin_overrides_built_in_with_a_warning():
    h = host("plugins.clashing")
    assert h.formats["chat"].description == "my chat"
    assert any("'chat'" in w and "plugins.clashing" in w for w in h.warnings)


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
            second = hub.render({"input": {"input": "more"}, "session": "s"})
            assert second["prompt"] == "User: more\n\nAssistant:"  # continuing: no preamble again

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
