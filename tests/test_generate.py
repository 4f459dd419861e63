"""Text generation: greedy tokens against the official runtime, stop strings across tokens, state hand-off, CLI."""

from __future__ import annotations

import subprocess
import sys

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
