"""The sampler: the official PIPELINE's greedy and penalty arithmetic exactly, distributions by statistics,
seeds, batches, and parameter validation."""

from __future__ import annotations

import math

import pytest
import torch

from rwkv_hub.core.sampling import ParameterError, Sampler, SamplingParams, no_penalty_ids

V = 65536
PLAIN = {"presence_penalty": 0.0, "frequency_penalty": 0.0}


def logit_steps(n: int, vocab: int = V, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(vocab, generator=g) * 2 for _ in range(n)]


@pytest.fixture(scope="module")
def world():
    from rwkv_hub.core.tokenizer import WorldTokenizer

    tok = WorldTokenizer()
    return tok, no_penalty_ids(tok, V)


def test_greedy_is_argmax() -> None:
    steps = logit_steps(5)
    for params in (SamplingParams(temperature=0, **PLAIN), SamplingParams(top_p=0, **PLAIN)):
        sampler = Sampler(V, [params, params])
        for x in steps:
            assert sampler.sample(torch.stack([x, -x])) == [int(x.argmax()), int((-x).argmax())]


def test_penalties_equal_the_official_pipeline_generate(world) -> None:
    """Run the official PIPELINE.generate on a stub model that returns fixed logits, and our sampler on the same."""
    from rwkv.utils import PIPELINE, PIPELINE_ARGS

    tok, free = world
    space, digit = tok.encode(" ")[0], tok.encode("7")[0]
    g = torch.Generator().manual_seed(3)
    favourites = [space, digit, 100, 2000, 30000, 40000, 65000]
    steps = []
    for _ in range(120):
        x = torch.randn(V, generator=g) * 0.3
        x[favourites] += 3 + torch.rand(len(favourites), generator=g)
        steps.append(x)

    class Stub:
        def __init__(self):
            self.i, self.fed = 0, []

        def forward(self, tokens, state):
            self.fed.append(list(tokens))
            self.i += 1
            return steps[self.i - 1].clone(), state

    stub = Stub()
    pipeline = PIPELINE(stub, "rwkv_vocab_v20230424")
    args = PIPELINE_ARGS(top_p=0, alpha_presence=0.4, alpha_frequency=0.3, alpha_decay=0.99, token_ban=[2000])
    pipeline.generate("Hi", token_count=len(steps), args=args)
    official = [t[0] for t in stub.fed[1:]]

    params = SamplingParams(
        top_p=0, presence_penalty=0.4, frequency_penalty=0.3, penalty_decay=0.99, banned_tokens=(2000,)
    )
    sampler = Sampler(V, [params], no_penalty_ids=free)
    ours = [sampler.sample(x[None])[0] for x in steps[:-1]]
    assert ours == official
    assert len(set(ours)) > 4 and space in ours and digit in ours  # penalties did move the argmax around


def test_occurrence_weights_follow_the_official_rule(world) -> None:
    _, free = world
    space = 33
    sampler = Sampler(V, [SamplingParams(temperature=0, penalty_decay=0.5)], no_penalty_ids=free)
    for tok in (5, space, 5):
        x = torch.zeros(V)
        x[tok] = 100
        sampler.sample(x[None])
    assert sampler.occurrences(0) == {5: 1 * 0.5 * 0.5 + 1, space: 0.0}  # decayed twice, then grown


def reference(logits: torch.Tensor, temperature: float, top_p: float, top_k: int) -> torch.Tensor:
    """The truncated, tempered distribution the issue states, written out plainly in float64."""
    p = torch.softmax(logits.double(), -1)
    order = torch.argsort(p, descending=True)
    keep = torch.zeros_like(p, dtype=torch.bool)
    if top_p < 1:
        cum = torch.cumsum(p[order], 0)
        cutoff = p[order][int((cum >= top_p).nonzero()[0])]
        keep = p >= cutoff
    else:
        keep[:] = True
    if top_k:
        keep &= torch.isin(torch.arange(len(p)), order[:top_k])
    w = torch.where(keep, p ** (1 / temperature), torch.zeros_like(p))
    return w / w.sum()


@pytest.mark.parametrize(
    ("temperature", "top_p", "top_k"), [(1.0, 0.6, 0), (0.7, 1.0, 3), (1.5, 0.9, 0), (1.3, 1.0, 0), (2.0, 0.8, 2)]
)
def test_draws_match_the_truncated_tempered_distribution(temperature: float, top_p: float, top_k: int) -> None:
    logits = torch.tensor([2.0, 1.5, 1.2, 0.7, 0.3, 0.0, -0.5, -1.0])
    expected = reference(logits, temperature, top_p, top_k)
    params = [SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=s, **PLAIN) for s in range(2000)]
    sampler = Sampler(len(logits), params)
    counts = torch.zeros(len(logits))
    for _ in range(10):
        counts += torch.bincount(torch.tensor(sampler.sample(logits.expand(2000, -1))), minlength=len(logits))
    support = expected > 0
    assert counts[~support].sum() == 0, "a token outside the top_p / top_k set was drawn"
    n = counts.sum()
    chi2 = float((((counts - n * expected) ** 2) / (n * expected))[support].sum())
    assert chi2 < 25, f"chi-square {chi2:.1f} over {int(support.sum()) - 1} degrees of freedom"


@pytest.mark.parametrize(("temperature", "top_p", "top_k"), [(1.0, 0.3, 0), (1.2, 0.95, 0), (0.8, 0.9, 40), (1, 1, 5)])
def test_candidate_path_equals_a_full_sort(temperature: float, top_p: float, top_k: int) -> None:
    params = [SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=s, **PLAIN) for s in range(8)]
    fast, full = Sampler(V, params), Sampler(V, params, window=float("inf"))
    for x in logit_steps(6, seed=1):
        logits = torch.stack([x * (1 + b) for b in range(8)])  # from flat to peaked rows
        assert fast.sample(logits) == full.sample(logits)


def test_seed_gives_the_same_tokens_alone_or_in_any_batch() -> None:
    mine = SamplingParams(temperature=1.2, top_p=0.9, top_k=50, seed=7)
    others = [SamplingParams(temperature=t, top_p=0.5, seed=None) for t in (0.5, 1.0, 2.0)]
    steps = logit_steps(20, seed=2)
    alone = Sampler(V, [mine])
    batch = Sampler(V, [*others[:2], mine, others[2], SamplingParams(temperature=0)])
    noise = torch.randn(5, V)
    for x in steps:
        a = alone.sample(x[None])[0]
        rows = noise.clone()
        rows[2] = x
        assert batch.sample(rows)[2] == a
    again = Sampler(V, [mine])
    assert [again.sample(x[None])[0] for x in steps] != [] and again.occurrences(0) == alone.occurrences(0)


def test_slots_subset_and_reset() -> None:
    p = SamplingParams(seed=1, top_p=0.9)
    s = Sampler(V, [p, p])
    x = logit_steps(1)[0]
    first = s.sample(x[None], slots=[1])
    s.reset(1, p)
    assert s.occurrences(1) == {} and s.sample(x[None], slots=[1]) == first


def test_banned_never_drawn_and_logit_bias_applied() -> None:
    logits = torch.zeros(16)
    params = [SamplingParams(top_p=1, banned_tokens=tuple(range(8)), seed=s, **PLAIN) for s in range(500)]
    assert min(Sampler(16, params).sample(logits.expand(500, -1))) >= 8
    biased = [SamplingParams(top_p=1, logit_bias={3: 100.0}, seed=s, **PLAIN) for s in range(200)]
    assert set(Sampler(16, biased).sample(logits.expand(200, -1))) == {3}
    greedy = SamplingParams(temperature=0, logit_bias={9: 1.5}, **PLAIN)
    x = torch.arange(16.0) / 10  # 15 is the argmax by 0.6; the bias lifts 9 above it
    assert Sampler(16, [greedy]).sample(x[None]) == [9]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 5.5),
        ("temperature", -0.1),
        ("top_p", 1.2),
        ("top_k", -1),
        ("presence_penalty", 3.0),
        ("frequency_penalty", math.nan),
        ("penalty_decay", 1.5),
        ("max_tokens", 0),
        ("seed", -1),
        ("banned_tokens", [-4]),
        ("logit_bias", {1: 1000.0}),
    ],
)
def test_validation_names_the_parameter_and_range(field: str, value: object) -> None:
    with pytest.raises(ParameterError, match=field) as err:
        SamplingParams(**{field: value})
    assert "range" in str(err.value) or "must" in str(err.value)


def test_vocabulary_checks_at_the_sampler() -> None:
    with pytest.raises(ParameterError, match="banned_tokens"):
        Sampler(16, [SamplingParams(banned_tokens=(20,))])
    with pytest.raises(ParameterError, match="all 4 tokens"):
        Sampler(4, [SamplingParams(banned_tokens=(0, 1, 2, 3))])


def test_defaults_are_chatrwkv_and_runner() -> None:
    p = SamplingParams()
    assert (p.temperature, p.top_p, p.presence_penalty, p.frequency_penalty, p.penalty_decay) == (
        1.0,
        0.3,
        0.5,
        0.5,
        0.996,
    )


def test_nucleus_cutoff_equals_the_sorted_cutoff() -> None:
    from rwkv_hub.core.sampling.sampler import nucleus_cutoff

    g = torch.Generator().manual_seed(3)
    for scale in (0.1, 1.0, 3.0, 10.0):
        logits = torch.randn(6, 65536, generator=g) * scale
        logits[1, :100] = 5.0  # ties at the top
        probs = torch.softmax(logits, -1)
        for top_p in (0.05, 0.3, 0.7, 0.95, 1.0):
            vals, _ = torch.sort(probs, -1, descending=True)
            cum = torch.cumsum(vals.double(), -1)
            idx = (cum >= top_p).to(torch.int8).argmax(-1)
            want = torch.where((cum[:, -1] >= top_p) & torch.tensor(top_p < 1), vals.gather(1, idx[:, None])[:, 0], 0.0)
            got = nucleus_cutoff(probs, [top_p] * 6)
            assert torch.equal(got, want), (scale, top_p)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 0.3), (1.3, 0.6), (0.7, 0.95)])
def test_flat_rows_of_a_large_vocabulary_draw_as_the_full_sort_does(temperature: float, top_p: float) -> None:
    big = 65536
    params = [SamplingParams(temperature=temperature, top_p=top_p, seed=s, **PLAIN) for s in range(6)]
    fast, full = Sampler(big, params), Sampler(big, params, window=float("inf"))
    g = torch.Generator().manual_seed(5)
    for _ in range(4):
        logits = torch.randn(6, big, generator=g) * torch.tensor([0.5, 1, 1, 2, 2, 4])[:, None]
        assert fast.sample(logits) == full.sample(logits)


def test_ids_without_text_are_never_drawn() -> None:
    from rwkv_hub.core.sampling import unusable_ids
    from rwkv_hub.core.tokenizer.choose import world_tokenizer

    never = unusable_ids(world_tokenizer(), 65536)
    assert never == frozenset(range(65530, 65536))
    logits = torch.zeros(64, 65536)
    logits[:, 65530:] = 20.0  # a head that favours the padding rows
    params = [SamplingParams(top_p=1, seed=s, **PLAIN) for s in range(64)]
    drawn = Sampler(65536, params, never=never).sample(logits)
    assert max(drawn) < 65530
    greedy = Sampler(65536, [SamplingParams(temperature=0)], never=never).sample(logits[:1])
    assert greedy[0] < 65530


@pytest.mark.parametrize("greedy", [True, False])
def test_non_finite_logits_sample_the_finite_or_fail_clearly(greedy: bool) -> None:
    """NaN is never drawn and +inf always is (an fp16 overflow); a row with nothing finite is one clear
    error, not an IndexError from inside a sort."""
    from rwkv_hub.core.errors import RWKVHubError

    params = SamplingParams(temperature=0 if greedy else 1.0, top_p=0.9, seed=1)
    s = Sampler(8, [params])
    nan = torch.full((1, 8), float("nan"))
    nan[0, 5] = 1.0
    assert all(s.sample(nan) == [5] for _ in range(5))
    inf = torch.zeros(1, 8)
    inf[0, 2] = float("inf")
    assert s.sample(inf) == [2]
    with pytest.raises(RWKVHubError, match="not finite"):
        s.sample(torch.full((1, 8), float("nan")))
