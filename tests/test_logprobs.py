"""Log probabilities of generated tokens: the official package's distribution on the same file, whatever
the sampler did; tokens of a stop string left out; the same numbers in a batch as alone."""

from __future__ import annotations

import asyncio

import pytest
import torch

from rwkv_hub.core.engine import Engine
from rwkv_hub.core.errors import RWKVHubError
from rwkv_hub.core.sampling import SamplingParams

SHAPE = dict(n_layer=2, n_embd=128, vocab_size=256, head_size=64)  # bytes: tokens split UTF-8 characters
# Sampling that is not the model's plain distribution: penalties and a bias change what is picked, never
# the log probabilities reported.
SAMPLING = SamplingParams(temperature=1.3, top_p=0.9, presence_penalty=0.7, logit_bias={65: 3.0}, max_tokens=24, seed=7)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


async def generate(model, prompt: str, params: SamplingParams, logprobs: int | None):
    async with Engine(model) as engine:
        stream = engine.submit(prompt, params, logprobs=logprobs)
        text = await stream.text()
        return text, stream.result, list(stream.logprobs)


def test_each_token_has_the_official_models_log_probability(checkpoint_factory, model_factory, official_factory):
    path = checkpoint_factory(**SHAPE)
    model, official = model_factory(path), official_factory(path)
    prompt = "def add(a, b):"
    text, result, got = run(generate(model, prompt, SAMPLING, 5))
    assert result.finish_reason == "length" and len(got) == len(result.tokens) == 24
    assert [e.id for e in got] == result.tokens
    assert b"".join(e.bytes for e in got) == model.tokenizer.decode_bytes(result.tokens)
    logits, state = official.forward(model.tokenizer.encode(prompt))
    picked_below_top = 0
    for entry in got:
        ref = torch.log_softmax(logits.float(), -1)
        assert abs(entry.logprob - ref[entry.id].item()) < 1e-4
        want = torch.topk(ref, 5)
        assert [i for i, _, _ in entry.top] == want.indices.tolist()
        assert [v for _, _, v in entry.top] == pytest.approx(want.values.tolist(), abs=1e-4)
        assert [b for _, b, _ in entry.top] == [bytes([i]) for i in want.indices.tolist()]
        picked_below_top += entry.id != entry.top[0][0]
        logits, state = official.forward([entry.id], state)
    assert picked_below_top > 0  # the sampler did pick other tokens than the model's first choice


def test_a_batch_reports_what_each_stream_reports_alone(checkpoint_factory, model_factory):
    model = model_factory(checkpoint_factory(**SHAPE))

    async def together():
        async with Engine(model) as engine:
            a = engine.submit("import os", SAMPLING, logprobs=2)
            b = engine.submit("x = 1", SAMPLING)
            c = engine.submit("User: hi", SamplingParams(temperature=0, max_tokens=9), logprobs=0)
            await asyncio.gather(a.text(), b.text(), c.text())
            return a.logprobs, b.logprobs, c.logprobs

    a, b, c = run(together())
    alone = run(generate(model, "import os", SAMPLING, 2))[2]
    assert [(e.id, e.bytes) for e in a] == [(e.id, e.bytes) for e in alone]
    assert [e.logprob for e in a] == pytest.approx([e.logprob for e in alone], abs=1e-6)
    assert all(len(e.top) == 2 for e in a) and b == [] and len(c) == 9 and all(e.top == () for e in c)


def forcing(script: bytes):
    """A logit processor that makes the model write `script` (byte tokens), whatever it would write."""

    def force(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(logits, -1e9)
        out[script[len(generated)]] = 0.0
        return out

    return force


def test_the_tokens_of_a_stop_string_are_not_reported(checkpoint_factory, model_factory):
    """ "xaabc" with the stop string "abc": the stop matcher holds back the first "a" and the second, lets
    the first go when the second could still start "abc", and "c" completes it. Reported: "x" and the
    first "a"; the second "a", "b" and "c" are the stop string's. A processor forces the text, and the
    log probabilities are still the model's own."""
    model = model_factory(checkpoint_factory(**SHAPE))

    async def go():
        async with Engine(model) as engine:
            params = SamplingParams(temperature=0, max_tokens=10, stop=("abc",))
            stream = engine.submit("hi", params, logprobs=1, logit_processors=[forcing(b"xaabcdefghij")])
            deltas = [(d, len(stream.logprobs)) async for d in stream]
            return deltas, stream.result, list(stream.logprobs)

    deltas, result, got = run(go())
    assert result.finish_reason == "stop" and result.text == "xa" and result.tokens == list(b"xaabc")
    assert [e.bytes for e in got] == [b"x", b"a"]
    assert deltas == [("x", 1), ("a", 2)]  # each delta comes with its own tokens' entries
    alone = run(generate(model, "hi", SamplingParams(temperature=0, max_tokens=1), 1))[2]
    assert got[0].top == alone[0].top  # what the model weighed, not what the processor made of it


@pytest.mark.parametrize("bad", [-1, 21, 2.5, True, "3"])
def test_a_bad_count_is_one_clear_error(checkpoint_factory, model_factory, bad):
    model = model_factory(checkpoint_factory(**SHAPE))

    async def go():
        async with Engine(model) as engine:
            engine.submit("hi", SAMPLING, logprobs=bad)

    with pytest.raises(RWKVHubError, match=r"logprobs = .*: must be a whole number from 0 to 20"):
        run(go())
