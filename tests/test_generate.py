"""Text generation: greedy tokens against the official runtime, stop strings across tokens, state hand-off, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rwkv_hub
from rwkv_hub.core.generate import StopMatcher

GREEDY = {"temperature": 0, "presence_penalty": 0, "frequency_penalty": 0}


@pytest.fixture(scope="module")
def byte_model(checkpoint_factory, model_factory):
    """Vocabulary 256: the byte tokenizer, one token per byte, so stop strings can be placed across tokens."""
    path = checkpoint_factory(n_layer=2, n_embd=128, vocab_size=256)
    return path, model_factory(path)


def test_greedy_generation_equals_the_official_runtime_argmax_loop(byte_model, official_factory) -> None:
    path, model = byte_model
    prompt = list(b"The answer is")
    run = model.generate(prompt, max_tokens=24, **GREEDY)
    "".join(run)
    ref = official_factory(path)
    logits, state = ref.forward(prompt)
    expected = []
    for _ in range(24):
        token = int(torch.argmax(logits))
        expected.append(token)
        logits, state = ref.forward(token, state)
    assert run.result.tokens == expected
    assert run.result.finish_reason == "length"
    assert run.result.completion_tokens == 24 and run.result.prompt_tokens == len(prompt)


def test_stop_string_spread_over_three_tokens_is_cut_and_never_shown(byte_model) -> None:
    _, model = byte_model
    free = model.generate("hello", temperature=1.0, top_p=0.9, max_tokens=40, seed=7)
    text = "".join(free)
    tokens = free.result.tokens
    # Pick a stop string made of tokens 10..12: it spans three tokens and starts mid-stream.
    stop = bytes(tokens[10:13]).decode("utf-8", errors="replace")
    first = bytes(tokens).decode("utf-8", errors="replace").find(stop)
    cut = model.generate("hello", temperature=1.0, top_p=0.9, max_tokens=40, seed=7, stop=[stop])
    deltas = list(cut)
    assert cut.result.finish_reason == "stop"
    assert "".join(deltas) == text[:first] == cut.result.text
    assert all(stop not in d for d in deltas)


def test_stop_token_ends_generation_without_text(byte_model) -> None:
    _, model = byte_model
    free = model.generate("abc", max_tokens=12, **GREEDY)
    "".join(free)
    stop_at = free.result.tokens[5]
    first = free.result.tokens.index(stop_at)
    run = model.generate("abc", max_tokens=12, stop_tokens=[stop_at], **GREEDY)
    "".join(run)
    assert run.result.finish_reason == "stop"
    assert run.result.tokens == free.result.tokens[:first]


def test_final_state_continues_like_one_long_prompt(byte_model) -> None:
    _, model = byte_model
    run = model.generate("chat turn one", max_tokens=8, **GREEDY)
    "".join(run)
    cont, _ = model.forward(list(b" next"), run.result.state)
    whole, _ = model.forward(list(b"chat turn one") + run.result.tokens + list(b" next"))
    assert torch.allclose(cont, whole, rtol=1e-4, atol=1e-5)


def test_generation_from_a_given_state_does_not_change_it(byte_model) -> None:
    _, model = byte_model
    _, state = model.forward(list(b"history"))
    before = [t.clone() for t in state.wkv]
    run = model.generate(" more", max_tokens=4, state=state, **GREEDY)
    "".join(run)
    assert all(torch.equal(a, b) for a, b in zip(before, state.wkv, strict=True))


def test_same_seed_gives_the_same_text_and_cancel_stops(byte_model) -> None:
    _, model = byte_model
    a = "".join(model.generate("x", temperature=1.2, top_p=0.8, max_tokens=16, seed=3))
    b = "".join(model.generate("x", temperature=1.2, top_p=0.8, max_tokens=16, seed=3))
    assert a == b
    run = model.generate("x", max_tokens=50, seed=1)
    for n, _ in enumerate(run):
        if n == 2:
            run.cancel()
    assert run.result.finish_reason == "cancelled"
    assert run.result.completion_tokens <= 4


def test_bad_parameters_and_empty_prompt_are_user_errors(byte_model) -> None:
    _, model = byte_model
    with pytest.raises(rwkv_hub.RWKVHubError, match="top_p"):
        model.generate("x", top_p=1.5)
    with pytest.raises(rwkv_hub.RWKVHubError, match="empty"):
        list(model.generate(""))


@pytest.mark.parametrize(
    ("pieces", "stops", "shown", "stopped"),
    [
        (["ab", "c\n", "\nrest"], ["\n\n"], "abc", True),
        (["Us", "er", ":"], ["\n\nUser"], "User:", False),
        (["x\n", "\nU", "ser"], ["\n\nUser"], "x", True),
        (["a", "b"], [], "ab", False),
        (["ab", "aba", "c"], ["abac"], "ab", True),  # a partial match that fails falls back to its border
        (["xab", "cd"], ["abcd", "bc"], "xa", True),  # the first stop string completed wins
        (["xab", "cd"], ["cd", "bcd"], "xa", True),  # of those completed together, the longest
    ],
)
def test_stop_matcher_holds_back_possible_starts(pieces, stops, shown, stopped) -> None:
    m = StopMatcher(stops)
    out, hit = "", False
    for p in pieces:
        text, hit = m.push(p)
        out += text
        if hit:
            break
    if not hit:
        out += m.flush()
    assert (out, hit) == (shown, stopped)


def test_a_long_stop_string_costs_its_length_once_not_on_every_token() -> None:
    """The matcher used to test every prefix of every stop string against the buffer on each token, which
    is quadratic in a stop string's length and stalled the whole engine; now each character costs O(1)."""
    import time

    stop = "x" * 20_000
    m = StopMatcher([stop])
    t0 = time.perf_counter()
    shown = [m.push("x") for _ in range(2_000)]
    elapsed = time.perf_counter() - t0
    assert shown == [("", False)] * 2_000  # all of it could still become the stop string: held back
    assert m.push("y") == ("x" * 2_000 + "y", False)
    assert elapsed < 1.0, f"{elapsed:.2f} s for 2,000 tokens"  # before: minutes


def test_a_lone_surrogate_is_a_user_error_not_a_crash(byte_model) -> None:
    _, model = byte_model
    with pytest.raises(rwkv_hub.RWKVHubError, match="lone UTF-16 surrogate"):
        model.generate("a\ud800b")


def test_cli_streams_and_reports(byte_model) -> None:
    path, _ = byte_model
    cmd = [
        sys.executable,
        "-m",
        "rwkv_hub",
        "generate",
        "--model",
        str(path),
        "--strategy",
        "cpu fp32",
        "--temperature",
        "0",
        "--max-tokens",
        "5",
        "-",
    ]
    r = subprocess.run(cmd, input="prompt from stdin", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "length: 17 prompt tokens, 5 generated" in r.stderr
    bad = subprocess.run(cmd[:-1] + ["--top-p", "7", "x"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "top_p" in bad.stderr and "Traceback" not in bad.stderr


@pytest.fixture(scope="module")
def peaked_world_checkpoint(tmp_path_factory) -> Path:
    """A World-vocabulary random model whose head favours a handful of tokens, so greedy output repeats them
    and penalties change the choice; the favoured set includes a space and a digit (the no-penalty rule)."""
    from rwkv_hub.core.synth import random_state_dict
    from rwkv_hub.core.tokenizer import world_tokenizer

    sd = random_state_dict(n_layer=1, n_embd=64, vocab_size=65536, head_size=32, dtype=torch.float32, seed=5)
    tok = world_tokenizer()
    favoured = [tok.encode(t)[0] for t in (" ", "7", " the", "A", ",", "\n")]
    head = sd["head.weight"] * 0.01
    head[favoured] *= 300
    sd["head.weight"] = head
    path = tmp_path_factory.mktemp("peaked") / "peaked.pth"
    torch.save(sd, path)
    return path


@pytest.mark.parametrize(
    ("presence", "frequency", "decay"),
    [(0.0, 0.0, 0.996), (0.4, 0.3, 0.99)],
    ids=["greedy", "greedy-with-penalties"],
)
def test_tokens_equal_the_official_pipeline_generate(
    peaked_world_checkpoint, official_factory, presence, frequency, decay
) -> None:
    """The official PIPELINE.generate with top_p = 0, on the same World-vocabulary random checkpoint."""
    from rwkv.utils import PIPELINE, PIPELINE_ARGS

    path = peaked_world_checkpoint
    prompt = "User: count to ten\n\nAssistant: 1 2 3"
    pipe = PIPELINE(official_factory(path).model, "rwkv_vocab_v20230424")
    drawn: list[int] = []
    sample = pipe.sample_logits

    def record(*args, **kwargs):
        drawn.append(sample(*args, **kwargs))
        return drawn[-1]

    pipe.sample_logits = record
    args = PIPELINE_ARGS(
        temperature=1.0,
        top_p=0.0,
        alpha_presence=presence,
        alpha_frequency=frequency,
        alpha_decay=decay,
        token_ban=[],
        token_stop=[],
    )
    pipe.generate(prompt, token_count=30, args=args)

    model = rwkv_hub.load(path, "cpu fp32", tokenizer="world")
    run = model.generate(
        prompt,
        temperature=1.0,
        top_p=0.0,
        presence_penalty=presence,
        frequency_penalty=frequency,
        penalty_decay=decay,
        max_tokens=30,
    )
    "".join(run)
    assert run.result.tokens == drawn
    if presence:  # the penalties must have changed the choice somewhere, or this case proves nothing
        plain = model.generate(
            prompt, temperature=1.0, top_p=0.0, presence_penalty=0, frequency_penalty=0, max_tokens=30
        )
        "".join(plain)
        assert plain.result.tokens != drawn
