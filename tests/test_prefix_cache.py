"""The prefix cache: longest-prefix lookup, exact logits from a cached state, the byte budget, LRU order."""

from __future__ import annotations

import random

import pytest
import torch

from rwkv_hub.core import prefix_cache as pc
from rwkv_hub.core.prefix_cache import PrefixCache

SHAPE = dict(n_layer=2, n_embd=128, vocab_size=256, head_size=64)


@pytest.fixture(scope="module")
def model(checkpoint_factory, model_factory):
    return model_factory(checkpoint_factory(**SHAPE))


@pytest.mark.parametrize("generation", ["x070", "x060", "x051", "x040"])
def test_warm_logits_equal_cold_logits_exactly(generation, checkpoint_factory, model_factory):
    model = model_factory(checkpoint_factory(**SHAPE, generation=generation))
    chunk = model.prefill_chunk
    prompt = [random.Random(0).randrange(256) for _ in range(chunk + 37)]
    cache = PrefixCache(2**30)
    _, state = model.forward(prompt[:chunk])
    cache.store(prompt[:chunk], state)
    n, cached = cache.lookup(prompt)
    assert n == chunk
    warm, _ = model.forward(prompt[n:], cached)
    cold, _ = model.forward(prompt)  # reads the same chunks
    assert torch.equal(warm, cold)


def test_longest_stored_prefix_wins_and_one_token_is_always_left(model):
    state = model.new_state()
    cache = PrefixCache(2**30)
    for n in (3, 10, 6):
        cache.store(list(range(n)), state)
    assert cache.lookup(list(range(20)))[0] == 10
    assert cache.lookup(list(range(10)))[0] == 6  # the whole prompt is never served: its logits are needed
    assert cache.lookup([0, 1, 2, 99, 4, 5, 6])[0] == 3
    assert cache.lookup([5, 5, 5]) == (0, None)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.tokens_saved) == (3, 1, 19)


def test_a_hash_collision_is_not_a_hit(model, monkeypatch):
    monkeypatch.setattr(pc, "prefix_hashes", lambda tokens: [0] * (len(tokens) + 1))
    cache = PrefixCache(2**30)
    cache.store([1, 2, 3], model.new_state())
    assert cache.lookup([4, 5, 6, 7])[0] == 0
    assert cache.lookup([1, 2, 3, 7])[0] == 3


def test_budget_holds_under_churn_and_evicts_least_recently_used(model):
    state = model.new_state()
    size = state.nbytes + 4 * pc.TOKEN_BYTES
    cache = PrefixCache(3 * size)
    for i in range(3):
        cache.store([i] * 4, state)
    cache.lookup([0, 0, 0, 0, 9])  # touch entry 0: entry 1 is now the oldest
    cache.store([7] * 4, state)
    assert cache.lookup([1, 1, 1, 1, 9])[0] == 0
    assert cache.lookup([0, 0, 0, 0, 9])[0] == 4
    rng = random.Random(1)
    for _ in range(200):
        cache.store([rng.randrange(50) for _ in range(4)], state)
        assert cache.nbytes <= cache.budget_bytes
        assert len(cache) <= 3
    assert cache.stats.evicted >= 197
    assert not cache.store(list(range(10**6)), state)  # bigger than the whole budget: refused, nothing evicted
    assert len(cache) == 3


def test_negative_budget_is_refused():
    with pytest.raises(ValueError):
        PrefixCache(-1)


def test_default_budget_scales_with_the_state_within_bounds():
    assert pc.default_budget(270_000) == 64 * 2**20
    assert pc.default_budget(2_400_000) == 240_000_000
    assert pc.default_budget(33_000_000) == 2**30
