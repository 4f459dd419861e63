"""Recurrent states: functional updates, copies, batching, files, sizes, and states that do not fit."""

from __future__ import annotations

import struct

import pytest
import torch
from conftest import assert_same_tensors, random_tokens, rel_err, state_snapshot

import rwkv_hub

SHAPE = dict(n_layer=2, n_embd=128, vocab_size=256, head_size=64)


@pytest.fixture(scope="module")
def model(checkpoint_factory, model_factory) -> rwkv_hub.Model:
    return model_factory(checkpoint_factory(**SHAPE))


@pytest.fixture(scope="module")
def histories(model) -> list[rwkv_hub.State]:
    """Three states that have read different texts."""
    return [model.forward(random_tokens(n, SHAPE["vocab_size"], seed=n), None)[1] for n in (4, 1, 19)]


def continue_logits(model: rwkv_hub.Model, state: rwkv_hub.State, steps: int = 4) -> list[torch.Tensor]:
    """Logits of a few fixed decode steps from `state`: a state's behaviour, whatever its layout."""
    out = []
    for tok in range(1, steps + 1):
        logits, state = model.forward([tok * 7], state)
        out.append(logits)
    return out


def assert_same_behaviour(model: rwkv_hub.Model, a: rwkv_hub.State, b: rwkv_hub.State) -> None:
    for step, (x, y) in enumerate(zip(continue_logits(model, a), continue_logits(model, b), strict=True)):
        assert torch.equal(x, y), f"step {step}: logits differ by {(x - y).abs().max().item()}"


# --- functional forward -------------------------------------------------------------------------------


def test_forward_does_not_modify_the_input_state(model, histories) -> None:
    state = histories[2]
    before = state_snapshot(state)
    first, _ = model.forward(random_tokens(30, SHAPE["vocab_size"], seed=99), state)
    model.forward([5], state)
    assert_same_tensors(state_snapshot(state), before)
    again, _ = model.forward(random_tokens(30, SHAPE["vocab_size"], seed=99), state)
    assert torch.equal(first, again)


def test_forward_batch_does_not_modify_the_input_states(model, histories) -> None:
    before = [state_snapshot(s) for s in histories]
    model.forward_batch([[1, 2, 3], [4], [5] * 300], histories)
    for s, b in zip(histories, before, strict=True):
        assert_same_tensors(state_snapshot(s), b)
    stacked = rwkv_hub.State.stack(histories)
    snap = state_snapshot(stacked)
    model.forward_batch([[1], [2, 3], [4]], stacked)
    assert_same_tensors(state_snapshot(stacked), snap)


def test_none_state_is_the_new_state(model) -> None:
    toks = random_tokens(10, SHAPE["vocab_size"], seed=1)
    a, sa = model.forward(toks, None)
    b, sb = model.forward(toks, model.new_state())
    assert torch.equal(a, b)
    assert_same_tensors(state_snapshot(sa), state_snapshot(sb))


def test_new_state_is_zero_fp32_batch_of_one(model) -> None:
    s = model.new_state()
    assert s.batch_size == 1
    for name, t in s.tensors().items():
        assert t.dtype == torch.float32, name
        assert not t.any(), name


def test_state_is_fp32_whatever_the_strategy(checkpoint_factory, model_factory) -> None:
    m = model_factory(checkpoint_factory(**SHAPE), "cpu bf16")
    _, s = m.forward([1, 2, 3], None)
    assert {t.dtype for t in s.tensors().values()} == {torch.float32}


def test_copy_is_independent(histories) -> None:
    original = histories[0]
    before = state_snapshot(original)
    c = original.copy()
    assert_same_tensors(state_snapshot(c), before)
    with torch.inference_mode():
        for t in c.tensors().values():
            t.add_(1.0)
    assert not torch.equal(c.tensors()["0.wkv"], original.tensors()["0.wkv"])
    assert_same_tensors(state_snapshot(original), before)


# --- batching -----------------------------------------------------------------------------------------


def test_stack_then_split_gives_back_the_states(model, histories) -> None:
    stacked = rwkv_hub.State.stack(histories)
    assert stacked.batch_size == 3
    parts = stacked.split()
    assert len(parts) == 3
    for part, original in zip(parts, histories, strict=True):
        assert part.batch_size == 1
        assert_same_tensors(state_snapshot(part), state_snapshot(original))
        assert_same_behaviour(model, part, original)


def test_stack_keeps_the_order_of_rows(histories) -> None:
    a = rwkv_hub.State.stack([histories[2], histories[0]]).split()
    assert_same_tensors(state_snapshot(a[0]), state_snapshot(histories[2]))
    assert_same_tensors(state_snapshot(a[1]), state_snapshot(histories[0]))


def test_forward_batch_with_a_stacked_state_returns_a_stacked_state(model, histories) -> None:
    toks = [[3, 4], [5], [6, 7, 8, 9]]
    logits_b, out_b = model.forward_batch(toks, rwkv_hub.State.stack(histories))
    logits_l, out_l = model.forward_batch(toks, histories)
    assert isinstance(out_b, rwkv_hub.State) and out_b.batch_size == 3
    assert isinstance(out_l, list) and len(out_l) == 3
    assert rel_err(logits_b, logits_l) <= 1e-6
    for part, lone in zip(out_b.split(), out_l, strict=True):
        for k, t in state_snapshot(part).items():
            assert rel_err(t, lone.tensors()[k]) <= 1e-6, k
    # ... and the batched state runs on.
    nxt, _ = model.forward_batch([[1], [1], [1]], out_b)
    for b in range(3):
        alone, _ = model.forward([1], out_l[b])
        assert rel_err(nxt[b], alone) <= 1e-5


def test_one_state_can_feed_several_rows_of_a_batch(model, histories) -> None:
    """Forking a conversation: the same State object in two rows, each row continuing on its own."""
    s = histories[2]
    logits, out = model.forward_batch([[1, 2], [3]], [s, s])
    for b, toks in enumerate([[1, 2], [3]]):
        alone, alone_state = model.forward(toks, s)
        assert rel_err(logits[b], alone) <= 1e-5
        for k, t in out[b].tensors().items():
            assert rel_err(t, alone_state.tensors()[k]) <= 1e-5, k


def test_stacking_states_of_different_models_is_refused(model, checkpoint_factory, model_factory) -> None:
    other = model_factory(checkpoint_factory(**{**SHAPE, "n_layer": 3}))
    with pytest.raises(rwkv_hub.StateError):
        rwkv_hub.State.stack([model.new_state(), other.new_state()])


def test_forward_batch_rejects_a_state_of_another_model(model, checkpoint_factory, model_factory) -> None:
    other = model_factory(checkpoint_factory(**{**SHAPE, "n_embd": 256}))
    with pytest.raises(rwkv_hub.StateError):
        model.forward([1], other.new_state())


@pytest.mark.parametrize("tokens", [[[]], [[1], []]], ids=["empty", "one-empty"])
def test_forward_batch_needs_a_token_for_every_sequence(model, tokens) -> None:
    with pytest.raises(rwkv_hub.RWKVHubError):
        model.forward_batch(tokens, [model.new_state() for _ in tokens])


def test_token_ids_outside_the_vocabulary_are_refused(model) -> None:
    with pytest.raises(rwkv_hub.RWKVHubError):
        model.forward([SHAPE["vocab_size"]], None)
    with pytest.raises(rwkv_hub.RWKVHubError):
        model.forward([-1], None)


# --- files --------------------------------------------------------------------------------------------


def test_saved_and_reloaded_state_continues_with_the_same_logits(model, histories, tmp_path) -> None:
    path = tmp_path / "chat.state"
    histories[2].save(path)
    loaded = model.load_state(path)
    assert loaded.batch_size == 1
    assert_same_tensors(state_snapshot(loaded), state_snapshot(histories[2]))
    assert_same_behaviour(model, loaded, histories[2])


def test_saved_batched_state_reloads_as_a_batch(model, histories, tmp_path) -> None:
    path = tmp_path / "batch.safetensors"
    stacked = rwkv_hub.State.stack(histories)
    stacked.save(path)
    loaded = model.load_state(path)
    assert loaded.batch_size == 3
    assert_same_tensors(state_snapshot(loaded), state_snapshot(stacked))


def test_state_file_is_safetensors(histories, tmp_path) -> None:
    from safetensors import safe_open

    path = tmp_path / "s.safetensors"
    histories[0].save(path)
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
    assert names == set(histories[0].tensors())


def test_save_replaces_the_file_and_leaves_no_temporary_files(model, histories, tmp_path) -> None:
    path = tmp_path / "s.state"
    histories[0].save(path)
    histories[1].save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["s.state"]
    assert_same_tensors(state_snapshot(model.load_state(path)), state_snapshot(histories[1]))


@pytest.mark.parametrize(
    "other",
    [{"n_embd": 256}, {"n_layer": 3}, {"n_embd": 128, "head_size": 32}],
    ids=["wider", "deeper", "other-head-size"],
)
def test_loading_a_state_of_a_differently_shaped_model_raises_state_error(
    model, checkpoint_factory, model_factory, tmp_path, other
) -> None:
    foreign = model_factory(checkpoint_factory(**{**SHAPE, **other}))
    _, s = foreign.forward([1, 2], None)
    path = tmp_path / "foreign.state"
    s.save(path)
    with pytest.raises(rwkv_hub.StateError) as e:
        model.load_state(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    foreign.load_state(path)  # it does fit its own model


def _damage(kind: str, good: bytes, path) -> None:
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a state\n" * 10)
    elif kind == "random-bytes":
        path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    elif kind == "huge-header":
        path.write_bytes(struct.pack("<Q", 1 << 40) + good[8:])
    elif kind == "bad-json-header":
        (n,) = struct.unpack("<Q", good[:8])
        path.write_bytes(good[:8] + b"{" * n + good[8 + n :])
    elif kind == "flipped-metadata":
        path.write_bytes(good.replace(b"rwkv-hub-state", b"rwkv-hub-STATE"))
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["truncated", "empty", "text", "random-bytes", "huge-header", "bad-json-header", "flipped-metadata"]
)
def test_damaged_state_file_raises_state_error(model, histories, tmp_path, kind) -> None:
    good_path = tmp_path / "good.state"
    histories[2].save(good_path)
    good = good_path.read_bytes()
    if kind == "flipped-metadata":
        assert b"rwkv-hub-state" in good, "test assumes the format name is in the file's metadata"
    path = tmp_path / "bad.state"
    _damage(kind, good, path)
    with pytest.raises(rwkv_hub.StateError) as e:
        model.load_state(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_state_file_raises_state_error(model, tmp_path) -> None:
    with pytest.raises(rwkv_hub.StateError) as e:
        model.load_state(tmp_path / "nope.state")
    assert "nope.state" in str(e.value)


def test_model_checkpoint_is_not_a_state(model, checkpoint_factory) -> None:
    with pytest.raises(rwkv_hub.StateError):
        model.load_state(checkpoint_factory(**SHAPE, fmt="safetensors"))


def test_state_file_with_a_wrongly_shaped_tensor_raises_state_error(model, histories, tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    good = tmp_path / "good.state"
    histories[0].save(good)
    with safe_open(str(good), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["1.wkv"] = tensors["1.wkv"][:, :, :, :-1].contiguous()
    bad = tmp_path / "bad.state"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(rwkv_hub.StateError):
        model.load_state(bad)
    tensors["1.wkv"] = histories[0].wkv[1].half()  # saved in half precision by another tool
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(rwkv_hub.StateError, match=r"1\.wkv is .* float16, expected .* float32"):
        model.load_state(bad)
    del tensors["1.wkv"]
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(rwkv_hub.StateError):
        model.load_state(bad)


# --- size ---------------------------------------------------------------------------------------------


def test_state_nbytes_is_the_sum_of_its_tensors_and_the_documented_formula(model, histories) -> None:
    s = histories[0]
    n_layer, c, h, n = SHAPE["n_layer"], SHAPE["n_embd"], model.spec.n_head, model.spec.head_size
    assert s.nbytes == sum(t.numel() * t.element_size() for t in s.tensors().values())
    assert s.nbytes == n_layer * (2 * c + h * n * n) * 4
    assert rwkv_hub.State.stack(histories).nbytes == 3 * s.nbytes


def test_state_size_does_not_grow_with_the_text(model) -> None:
    _, short = model.forward([1], None)
    _, long = model.forward(random_tokens(700, SHAPE["vocab_size"], seed=5), None)
    assert short.nbytes == long.nbytes == model.new_state().nbytes
    assert {k: t.shape for k, t in short.tensors().items()} == {k: t.shape for k, t in long.tensors().items()}


@pytest.mark.parametrize("generation", ["x070", "x060"])
def test_a_state_holds_no_memory_beyond_its_own_tensors(checkpoint_factory, model_factory, generation) -> None:
    """A state kept after a prompt must not pin the prompt's activations: the prefix cache and sessions
    count a state by `nbytes`, and a view of a chunk's rows would hold hundreds of times that."""
    m = model_factory(checkpoint_factory(**SHAPE, generation=generation))
    _, one = m.forward(random_tokens(300, SHAPE["vocab_size"], seed=3), None)
    _, batch = m.forward_batch([random_tokens(40, SHAPE["vocab_size"], seed=4), [7]], m.new_state(2))
    _, stepped = m.forward([9], one)
    for name, state in (("prompt", one), ("batch", batch), ("decode", stepped)):
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in state.tensors().values()}
        assert sum(storages.values()) == state.nbytes, f"{name}: holds {sum(storages.values())} bytes"


def test_select_takes_rows_from_either_end_and_refuses_others(histories) -> None:
    stacked = rwkv_hub.State.stack(histories)
    assert_same_tensors(state_snapshot(stacked.select(-1)), state_snapshot(histories[2]))
    assert_same_tensors(state_snapshot(stacked.select([0, -1]).split()[1]), state_snapshot(histories[2]))
    for bad in (3, -4, [5], [0, 3], 1.5, "0"):
        with pytest.raises(rwkv_hub.StateError, match="rows"):
            stacked.select(bad)


def test_forward_takes_numpy_and_torch_token_ids(model) -> None:
    """The decode loop feeds `logits.argmax()` back, a 0-d tensor; numpy ids come from tokenizers."""
    import numpy as np

    want, _ = model.forward([4], None)
    for token in (4, np.int64(4), torch.tensor(4)):
        got, _ = model.forward(token, None)
        assert torch.equal(got, want), type(token)


def test_saving_to_a_bad_path_is_a_state_error_and_leaves_nothing(histories, tmp_path) -> None:
    (tmp_path / "afile").write_text("x")
    for bad, why in (
        (tmp_path, "it is a folder"),
        (tmp_path / "no" / "s.st", "writable folder"),
        (tmp_path / "afile" / "s.st", "writable folder"),
    ):
        with pytest.raises(rwkv_hub.StateError, match=why):
            histories[0].save(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
