"""Chat sessions through the engine: turns feed only new tokens, forks are independent, files survive a
restart, and damaged or foreign files are skipped with a report."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from conftest import assert_same_tensors, state_snapshot

from rwkv_hub.core.engine import Engine
from rwkv_hub.core.errors import StateError
from rwkv_hub.core.sampling import SamplingParams
from rwkv_hub.core.sessions import SessionError, SessionStore, load_tuned_state

SHAPE = dict(n_layer=2, n_embd=128, vocab_size=256, head_size=64)
GREEDY = SamplingParams(temperature=0, max_tokens=8)


@pytest.fixture(scope="module")
def model(checkpoint_factory, model_factory):
    return model_factory(checkpoint_factory(**SHAPE))


@pytest.fixture(scope="module", params=["x070", "x060", "x052", "x051", "x050", "x040"])
def any_model(request, checkpoint_factory, model_factory):
    """A model of each generation: their states differ in layout, the session machinery must not care."""
    return model_factory(checkpoint_factory(**SHAPE, generation=request.param))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


async def turn(engine: Engine, sid: str, text: str, params: SamplingParams = GREEDY):
    stream = engine.submit(text, params, session=sid)
    await stream.text()
    return stream


def test_turns_feed_only_new_tokens_and_equal_one_long_run(any_model):
    model = any_model
    store = SessionStore(model.state_shape)
    store.create("chat")

    async def go():
        async with Engine(model, sessions=store) as engine:
            return await turn(engine, "chat", "User: hi\n\nAssistant:"), await turn(engine, "chat", "\n\nUser: more")

    one, two = run(go())
    assert two.stats.prompt_tokens == len("\n\nUser: more")
    s = store.get("chat")
    assert (s.turns, s.tokens) == (2, 2 * 8 + len("User: hi\n\nAssistant:") + len("\n\nUser: more"))
    whole = list(b"User: hi\n\nAssistant:") + one.result.tokens + list(b"\n\nUser: more")
    gen = model.generate(whole, GREEDY)
    "".join(gen)
    assert two.result.tokens == gen.result.tokens


def test_fork_gives_two_independent_continuations(any_model):
    model = any_model
    store = SessionStore(model.state_shape)
    store.create("a")

    async def go():
        async with Engine(model, sessions=store) as engine:
            await turn(engine, "a", "Once upon a time")
            store.fork("a", "b")
            before = state_snapshot(store.get("a").state)
            b = await turn(engine, "b", " there was")
            after_b = state_snapshot(store.get("a").state)
            a = await turn(engine, "a", " there was")
            return before, after_b, a, b

    before, after_b, a, b = run(go())
    assert_same_tensors(before, after_b, "a's state after b's turn")
    assert a.result.tokens == b.result.tokens  # the same point and the same greedy turn
    assert store.get("a").turns == store.get("b").turns == 2


def test_sessions_survive_a_restart(any_model, tmp_path):
    model = any_model
    store = SessionStore(model.state_shape, tmp_path)
    store.create("keep")

    async def first():
        async with Engine(model, sessions=store) as engine:
            return await turn(engine, "keep", "Hello")

    one = run(first())
    saved = state_snapshot(store.get("keep").state)
    restored = SessionStore(model.state_shape, tmp_path)  # a new daemon on the same folder
    assert restored.problems == []
    assert_same_tensors(saved, state_snapshot(restored.get("keep").state), "restored state")
    assert restored.list()[0]["turns"] == 1

    async def second(s):
        async with Engine(model, sessions=s) as engine:
            return await turn(engine, "keep", " again")

    two_restored = run(second(restored))
    two_live = run(second(store))
    assert two_restored.result.tokens == two_live.result.tokens
    assert one.result.finish_reason == "length"


def test_a_session_keeps_what_its_state_read_last_privately(model, tmp_path):
    """The last text the state read is kept with the turn (so the next turn can end a reply that was cut
    short) and follows rewind, fork, reset and a restart; the files are the user's alone."""
    store = SessionStore(model.state_shape, tmp_path / "sessions")
    store.create("t")

    async def go():
        async with Engine(model, sessions=store) as engine:
            return await turn(engine, "t", "User: hi\n\nAssistant:", SamplingParams(temperature=0, max_tokens=3))

    one = run(go())
    read = (list(b"User: hi\n\nAssistant:") + one.result.tokens)[-8:]
    assert store.get("t").tail == bytes(read).decode("utf-8", "replace")
    assert (tmp_path / "sessions").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "sessions" / "t.json").stat().st_mode & 0o777 == 0o600
    assert SessionStore(model.state_shape, tmp_path / "sessions").get("t").tail == store.get("t").tail
    assert store.fork("t", "u").tail == store.get("t").tail
    assert store.rewind("t").tail is None and store.reset("u").tail is None


def test_damaged_and_foreign_files_are_reported_and_skipped(model, tmp_path):
    store = SessionStore(model.state_shape, tmp_path)
    for sid in ("good", "garbled", "torn", "foreign"):
        store.create(sid)
    (tmp_path / "garbled.json").write_text("{not json")
    (tmp_path / "torn.safetensors").write_bytes(b"\x00" * 10)
    meta = json.loads((tmp_path / "foreign.json").read_text())
    meta["shape"]["n_embd"] = 4096
    (tmp_path / "foreign.json").write_text(json.dumps(meta))
    (tmp_path / "stray.json").write_text(json.dumps({"some": "other file"}))
    again = SessionStore(model.state_shape, tmp_path)
    assert [s["id"] for s in again.list()] == ["good"]
    assert len(again.problems) == 4
    assert any("foreign.json" in p and "4096" in p for p in again.problems)


def test_session_errors(model, tmp_path):
    store = SessionStore(model.state_shape, tmp_path, max_sessions=2)
    store.create("x")
    with pytest.raises(SessionError, match="already exists"):
        store.create("x")
    with pytest.raises(SessionError, match="bad session id"):
        store.create("../escape")
    store.create()
    with pytest.raises(SessionError, match="already 2 sessions"):
        store.create("z")
    with pytest.raises(SessionError, match="no session"):
        store.get("nope")
    store.delete("x")
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.safetensors").exists()

    async def busy():
        s = SessionStore(model.state_shape)
        s.create("one")
        async with Engine(model, sessions=s) as engine:
            first = engine.submit("a", SamplingParams(max_tokens=50), session="one")
            with pytest.raises(SessionError, match="busy"):
                engine.submit("b", session="one")
            await first.text()
            await turn(engine, "one", "c")  # free again
            return s.get("one").turns

    assert run(busy()) == 2


def test_state_tuned_initial_state(model, tmp_path):
    shape = model.state_shape
    g = torch.Generator().manual_seed(0)
    tuned = {f"blocks.{i}.att.time_state": torch.randn(2, 64, 64, generator=g) for i in range(2)}
    torch.save(tuned, tmp_path / "persona.pth")
    initial = load_tuned_state(tmp_path / "persona.pth", shape)
    assert torch.equal(initial.wkv[1][0], tuned["blocks.1.att.time_state"])
    store = SessionStore(shape, tmp_path / "s")
    store.create("p", initial)

    async def go():
        async with Engine(model, sessions=store) as engine:
            return await turn(engine, "p", "hi")

    got = run(go())
    gen = model.generate("hi", GREEDY, state=initial)
    "".join(gen)
    assert got.result.tokens == gen.result.tokens
    store.reset("p")
    assert torch.equal(store.get("p").state.wkv[0], initial.wkv[0])
    assert torch.equal(SessionStore(shape, tmp_path / "s").get("p").initial.wkv[0], initial.wkv[0])

    bad = dict(tuned)
    bad["blocks.1.att.time_state"] = torch.zeros(2, 32, 32)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(StateError, match=r"blocks.1.att.time_state has shape \(2, 32, 32\)"):
        load_tuned_state(tmp_path / "bad.pth", shape)
    torch.save({"blocks.0.att.time_state": tuned["blocks.0.att.time_state"]}, tmp_path / "short.pth")
    with pytest.raises(StateError, match="lacks blocks.1.att.time_state"):
        load_tuned_state(tmp_path / "short.pth", shape)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(StateError, match="not a readable state-tuning file"):
        load_tuned_state(tmp_path / "junk.pth", shape)


def test_transcript_rewind_and_rename(model, tmp_path):
    store = SessionStore(model.state_shape, tmp_path)
    store.create("t")

    async def go():
        async with Engine(model, sessions=store) as engine:
            one = engine.submit("hi", GREEDY, session="t", session_messages=[{"role": "user", "content": "hi"}])
            await one.text()
            after_one = state_snapshot(store.get("t").state)
            two = engine.submit(" more", GREEDY, session="t", session_messages=[{"role": "user", "content": "more"}])
            first_reply = await two.text()
            store.rewind("t")  # back to after turn one
            assert_same_tensors(after_one, state_snapshot(store.get("t").state), "state after rewind")
            again = engine.submit(" more", GREEDY, session="t", session_messages=[{"role": "user", "content": "more"}])
            return one, first_reply, await again.text()

    one, first_reply, regenerated = run(go())
    assert regenerated == first_reply  # greedy: the same reply from the same state
    s = store.get("t")
    assert [m["role"] for m in s.transcript] == ["user", "assistant", "user", "assistant"]
    assert s.transcript[1]["content"] == one.result.text and s.turns == 2
    store.rewind("t")  # one level of undo: the regenerated turn goes...
    with pytest.raises(SessionError, match="no turn to take back"):
        store.rewind("t")  # ...but not the one before it
    assert store.get("t").transcript == s.transcript[:2] and store.get("t").turns == 1
    store.rename("t", "renamed")
    assert not (tmp_path / "t.json").exists()
    again = SessionStore(model.state_shape, tmp_path)
    assert again.get("renamed").transcript == s.transcript[:2] and again.get("renamed").turns == 1
