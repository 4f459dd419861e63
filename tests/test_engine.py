"""The engine on a real model: concurrent streams equal lone ones, cancellation, limits, the prefix cache."""

from __future__ import annotations

import asyncio

import pytest
import torch

from rwkv_hub.core.engine import EDIT_TAIL, Engine, EngineBusy, EngineLimits, RequestTooLong
from rwkv_hub.core.errors import RWKVHubError
from rwkv_hub.core.prefix_cache import PrefixCache
from rwkv_hub.core.sampling import SamplingParams

SHAPE = dict(n_layer=2, n_embd=128, vocab_size=256, head_size=64)  # bytes vocabulary


@pytest.fixture(scope="module")
def model(checkpoint_factory, model_factory):
    return model_factory(checkpoint_factory(**SHAPE))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


REQUESTS = [
    ("def add(a, b):", SamplingParams(temperature=1.0, top_p=0.9, max_tokens=24, seed=1)),
    ("User: hi\n\nAssistant:", SamplingParams(temperature=1.3, top_p=0.5, max_tokens=17, seed=2)),
    ("x" * 300, SamplingParams(temperature=0, max_tokens=12)),  # longer than one prefill chunk
    ("import os", SamplingParams(top_p=1.0, top_k=5, presence_penalty=0.4, max_tokens=30, seed=3)),
    ("# a comment", SamplingParams(temperature=0.7, top_p=0.8, frequency_penalty=0.5, max_tokens=9, seed=4)),
]


async def _alone(model, prompt, params, **kw):
    async with Engine(model, **kw) as engine:
        stream = engine.submit(prompt, params)
        text = await stream.text()
        return text, stream.result


def test_concurrent_streams_equal_each_stream_run_alone(model):
    alone = [run(_alone(model, p, params)) for p, params in REQUESTS]

    async def together():
        async with Engine(model) as engine:
            streams = [engine.submit(p, params) for p, params in REQUESTS]
            texts = await asyncio.gather(*(s.text() for s in streams))
            return texts, [s.result for s in streams], engine.steps

    texts, results, steps = run(together())
    for (text, result), t2, r2 in zip(alone, texts, results, strict=True):
        assert t2 == text
        assert r2.tokens == result.tokens
        assert r2.finish_reason == result.finish_reason == "length"
    assert steps <= max(r.completion_tokens for r in results) + 3  # one batched step serves every stream


def test_a_lone_stream_equals_model_generate(model):
    prompt, params = REQUESTS[0]
    gen = model.generate(prompt, params)
    text = "".join(gen)
    got, result = run(_alone(model, prompt, params))
    assert got == text and result.tokens == gen.result.tokens
    # The final state has read the prompt and every generated token, as with generate.
    nxt, _ = model.forward([65], result.state)
    want, _ = model.forward([65], gen.result.state)
    assert torch.equal(nxt, want)


def test_stop_strings_and_stop_tokens_end_one_stream_while_others_go_on(model):
    async def go():
        async with Engine(model) as engine:
            free = engine.submit("abc", SamplingParams(temperature=0, max_tokens=40))
            text = await free.text()
            cut = text[5:7]
            stopped = engine.submit("abc", SamplingParams(temperature=0, max_tokens=40, stop=(cut,)))
            token = free.result.tokens[3]
            by_token = engine.submit("abc", SamplingParams(temperature=0, max_tokens=40, stop_tokens=(token,)))
            other = engine.submit("xyz", SamplingParams(temperature=0, max_tokens=40))
            return free, text, await stopped.text(), stopped, await by_token.text(), by_token, await other.text(), other

    free, text, s_text, stopped, t_text, by_token, o_text, other = run(go())
    assert stopped.result.finish_reason == "stop" and s_text == text[: text.index(text[5:7])]
    assert by_token.result.finish_reason == "stop" and by_token.result.tokens == free.result.tokens[:3]
    assert other.result.finish_reason == "length" and other.result.completion_tokens == 40


def test_cancel_mid_stream_frees_the_slot_and_others_continue(model):
    async def go():
        limits = EngineLimits(max_active=2, max_queue=4)
        async with Engine(model, limits) as engine:
            long = engine.submit("aaa", SamplingParams(temperature=0, max_tokens=4000))
            short = engine.submit("bbb", SamplingParams(temperature=0, max_tokens=30))
            waiting = engine.submit("ccc", SamplingParams(temperature=0, max_tokens=5))  # needs long's slot
            seen = 0
            async for _ in long:
                seen += 1
                if seen == 3:
                    long.cancel()
            return long, await short.text(), short, await waiting.text(), waiting

    long, _, short, _, waiting = run(go())
    assert long.result.finish_reason == "cancelled" and long.result.completion_tokens < 4000
    assert short.result.finish_reason == "length" and short.result.completion_tokens == 30
    assert waiting.result.finish_reason == "length" and waiting.result.completion_tokens == 5


def test_limits_refuse_at_once(model):
    async def go():
        limits = EngineLimits(max_active=1, max_queue=1, max_prompt_tokens=50, max_new_tokens=100)
        async with Engine(model, limits) as engine:
            with pytest.raises(RequestTooLong, match="at most 50"):
                engine.submit("x" * 51, SamplingParams(max_tokens=5))
            with pytest.raises(RequestTooLong, match="at most 100"):
                engine.submit("x", SamplingParams(max_tokens=101))
            with pytest.raises(RWKVHubError, match="empty"):
                engine.submit("", SamplingParams(max_tokens=5))
            with pytest.raises(RWKVHubError, match="outside the vocabulary"):
                engine.submit([1, 999], SamplingParams(max_tokens=5))
            a = engine.submit("a", SamplingParams(max_tokens=100))
            b = engine.submit("b", SamplingParams(max_tokens=5))
            with pytest.raises(EngineBusy, match=r"busy: 2 requests running or waiting, the most it takes"):
                engine.submit("c", SamplingParams(max_tokens=5))
            a.cancel()
            await a.text()
            await b.text()
            c = engine.submit("c", SamplingParams(max_tokens=2))  # room again
            return await c.text(), c

    _, c = run(go())
    assert c.result.completion_tokens == 2


def test_a_long_prompt_does_not_stall_running_streams(model):
    async def go():
        limits = EngineLimits(prefill_chunk=32, prefill_budget=32, cache_interval=64)
        async with Engine(model, limits) as engine:
            running = engine.submit("r", SamplingParams(temperature=0, max_tokens=40))
            await running.__anext__()
            long = engine.submit("y" * 2000, SamplingParams(temperature=0, max_tokens=1))
            await running.text()
            done_first = long.result is None
            await long.text()
            return done_first, running, long

    done_first, running, long = run(go())
    assert done_first  # 40 tokens came out while the 2,000-byte prompt was still being read
    assert long.result.completion_tokens == 1 and long.stats.prompt_tokens == 2000


def test_prefix_cache_hit_gives_the_cold_run_tokens(model):
    limits = EngineLimits(prefill_chunk=32, prefill_budget=64, cache_interval=64)
    base = "The quick brown fox jumps over the lazy dog. " * 4  # 180 bytes
    params = SamplingParams(temperature=0, max_tokens=20)

    async def go():
        cache = PrefixCache(64 * 2**20)
        async with Engine(model, limits, cache) as engine:
            first = engine.submit(base, params)
            await first.text()
            second = engine.submit(base + "And then?", params)
            await second.text()
            return first, second, cache

    first, second, cache = run(go())
    assert first.stats.cached_tokens == 0
    assert second.stats.cached_tokens == len(base)  # the state stored at the end of the first prompt
    assert cache.stats.hits == 1
    _, cold = run(_alone(model, base + "And then?", params, limits=limits))
    assert second.result.tokens == cold.tokens


def test_an_edit_near_the_end_of_an_interactive_prompt_reuses_all_but_its_tail(model):
    """The editor case: the last few characters change (a backspace, then typing on). A plain request's
    state is cached only at the end and every `cache_interval`; an interactive one's also EDIT_TAIL tokens
    before the end, so the edited prompt is read from there."""
    limits = EngineLimits(prefill_chunk=32, prefill_budget=64, cache_interval=1024)
    base = "def total(items):\n    result = 0\n    for item in items:\n        result += item.price\n" * 2
    edited = base[:-3] + "cost\n"
    params = SamplingParams(temperature=0, max_tokens=12)

    async def go(interactive):
        async with Engine(model, limits, PrefixCache(64 * 2**20)) as engine:
            await engine.submit(base, params, interactive=interactive).text()
            second = engine.submit(edited, params, interactive=interactive)
            await second.text()
            return second

    typed = run(go(True))
    assert typed.stats.cached_tokens == len(base) - EDIT_TAIL  # bytes vocabulary: a token per character
    assert run(go(False)).stats.cached_tokens == 0
    _, cold = run(_alone(model, edited, params, limits=limits))
    assert typed.result.tokens == cold.tokens


def test_continuing_a_state_equals_one_long_request(model):
    params = SamplingParams(temperature=0, max_tokens=10)

    async def go():
        async with Engine(model) as engine:
            one = engine.submit("Hello", params)
            await one.text()
            two = engine.submit(" again", params, state=one.result.state)
            await two.text()
            return one, two

    one, two = run(go())
    whole = list(b"Hello") + one.result.tokens + list(b" again")
    gen = model.generate(whole, params)
    "".join(gen)
    assert two.result.tokens == gen.result.tokens


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(model, monkeypatch):
    real = model.forward_batch
    calls = {"n": 0}

    def flaky(tokens, states):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory")
        return real(tokens, states)

    async def go():
        async with Engine(model) as engine:
            monkeypatch.setattr(model, "forward_batch", flaky)
            doomed = engine.submit("a", SamplingParams(max_tokens=3))
            with pytest.raises(RWKVHubError, match="the model failed on this request: out of memory"):
                await doomed.text()
            fine = engine.submit("a", SamplingParams(max_tokens=3))
            return await fine.text(), fine

    _, fine = run(go())
    assert fine.result.completion_tokens == 3


def test_interactive_requests_go_ahead_of_queued_chat_work(model):
    async def go():
        async with Engine(model, EngineLimits(max_active=1, max_queue=8)) as engine:
            running = engine.submit("a", SamplingParams(temperature=0, max_tokens=4000))
            await running.__anext__()
            chat = engine.submit("b", SamplingParams(temperature=0, max_tokens=3))
            first_completion = engine.submit("c", SamplingParams(temperature=0, max_tokens=3), interactive=True)
            second_completion = engine.submit("d", SamplingParams(temperature=0, max_tokens=3), interactive=True)
            running.cancel()
            await asyncio.gather(running.text(), chat.text(), first_completion.text(), second_completion.text())
            return [s.stats.queue_s for s in (first_completion, second_completion, chat)]

    first, second, chat = run(go())
    assert first < second < chat  # interactive ones in their own order, both before the chat request
