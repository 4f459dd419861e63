"""Loading: what a good checkpoint gives, and the one-line errors for bad files and strategies."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import needs_cuda, random_tokens, strategy_name

import rwkv_hub
from rwkv_hub.core.synth import lora_ranks, random_state_dict

SHAPE = dict(n_layer=2, n_embd=128, vocab_size=256, head_size=64)
CPU_STRATEGIES = {
    "cpu fp32": "cpu fp32",
    "cpu bf16": "cpu bf16",
    "cpu bf16i8": "cpu bf16i8",
    "cpu int8": "cpu bf16i8",
    "cpu fp32i8": "cpu fp32i8",
}


@pytest.fixture(scope="module", params=["pth", "safetensors"])
def good(request, checkpoint_factory):
    return checkpoint_factory(**SHAPE, fmt=request.param)


def expect_error(exc_type: type[Exception], path, *, strategy: str = "cpu fp32") -> str:
    """Load `path`, expect `exc_type` with a one-line message naming the file; return the message."""
    with pytest.raises(exc_type) as e:
        rwkv_hub.load(path, strategy=strategy)
    msg = str(e.value)
    assert isinstance(e.value, rwkv_hub.RWKVHubError)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    return msg


def save_pth(sd: dict, path):
    torch.save(sd, path)
    return path


# --- good files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", list(CPU_STRATEGIES))
def test_every_cpu_strategy_loads_and_runs(good, strategy) -> None:
    model = rwkv_hub.load(good, strategy=strategy)
    assert strategy_name(model) == CPU_STRATEGIES[strategy]
    logits, state = model.forward(random_tokens(12, SHAPE["vocab_size"]), None)
    assert logits.shape == (SHAPE["vocab_size"],) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert logits.std() > 0.1  # not a constant vector
    logits, _ = model.forward([3], state)
    assert torch.isfinite(logits).all()


def test_load_defaults_to_cpu_fp32_and_takes_a_str_path(good) -> None:
    assert strategy_name(rwkv_hub.load(str(good))) == "cpu fp32"


@pytest.mark.parametrize("name", ["model.pth", "model.bin", "model"])
def test_safetensors_content_loads_whatever_the_suffix(checkpoint_factory, tmp_path, name) -> None:
    src = checkpoint_factory(**SHAPE, fmt="safetensors")
    path = tmp_path / name
    path.write_bytes(src.read_bytes())
    toks = random_tokens(5, SHAPE["vocab_size"])
    assert torch.equal(rwkv_hub.load(path).forward(toks)[0], rwkv_hub.load(src).forward(toks)[0])


def test_strategy_spelling_is_forgiving(good) -> None:
    assert strategy_name(rwkv_hub.load(good, strategy="  CPU   BF16 ")) == "cpu bf16"


def test_spec_is_read_from_the_tensors(good) -> None:
    spec = rwkv_hub.load(good).spec
    assert (spec.n_layer, spec.n_embd, spec.head_size, spec.vocab_size) == (2, 128, 64, 256)
    assert spec.n_head == 2
    ranks = lora_ranks(SHAPE["n_embd"])
    assert {k: spec.lora[k] for k in ("decay", "a", "gate", "value")} == {k: ranks[k] for k in ranks}


def _logits(path) -> torch.Tensor:
    model = rwkv_hub.load(path)
    _, state = model.forward(random_tokens(20, SHAPE["vocab_size"], seed=4), None)
    return model.forward([3], state)[0]


@pytest.mark.parametrize("layout", ["flat-vectors", "wrapped", "non-contiguous", "shared-storage", "extra-entries"])
def test_equivalent_pth_layouts_give_the_same_logits(checkpoint_factory, tmp_path, layout) -> None:
    """The same weights saved differently: (C,) vectors, {"state_dict": ...}, transposed views, shared storage."""
    src = checkpoint_factory(**SHAPE)
    sd = dict(random_state_dict(**SHAPE))
    if layout == "flat-vectors":
        obj = {k: (t.reshape(-1) if t.dim() == 3 else t) for k, t in sd.items()}
    elif layout == "wrapped":
        obj = {"state_dict": sd, "epoch": 3}
    elif layout == "non-contiguous":
        obj = {k: (t.t().contiguous().t() if t.dim() == 2 else t) for k, t in sd.items()}
        assert not obj["blocks.0.att.key.weight"].is_contiguous()
    elif layout == "shared-storage":
        big = torch.cat([sd["emb.weight"].reshape(-1), sd["head.weight"].reshape(-1)])
        n = sd["emb.weight"].numel()
        obj = {**sd, "emb.weight": big[:n].view_as(sd["emb.weight"]), "head.weight": big[n:].view_as(sd["head.weight"])}
    else:
        obj = {**sd, "_version": 2, "note": "exported"}
    path = save_pth(obj, tmp_path / f"{layout}.pth")
    assert torch.equal(_logits(path), _logits(src))


def test_inspect_checkpoint_reports_the_shapes(good) -> None:
    from rwkv_hub.core import inspect_checkpoint

    info = inspect_checkpoint(good)
    assert (info.n_layer, info.n_embd, info.head_size, info.n_head, info.vocab_size) == (2, 128, 64, 2, 256)
    assert info.generation == "x070"
    sd = random_state_dict(**SHAPE)
    assert info.n_params == sum(t.numel() for t in sd.values())
    assert info.file_bytes == good.stat().st_size


@pytest.mark.parametrize("strategy", ["cpu fp32", "cpu bf16", "cpu bf16i8", "cpu fp32i8"])
def test_inspect_memory_estimate_matches_the_loaded_model(good, strategy) -> None:
    from rwkv_hub.core import inspect_checkpoint

    estimate = inspect_checkpoint(good).bytes_per_strategy()[strategy]
    held = rwkv_hub.load(good, strategy=strategy).weight_bytes
    assert abs(estimate - held) <= 0.01 * held, f"{strategy}: estimate {estimate} vs {held} bytes held"


def test_inspect_checkpoint_raises_checkpoint_error_on_a_bad_file(tmp_path) -> None:
    from rwkv_hub.core import inspect_checkpoint

    path = tmp_path / "x.pth"
    path.write_text("hello\n")
    with pytest.raises(rwkv_hub.CheckpointError):
        inspect_checkpoint(path)


# --- bad files ----------------------------------------------------------------------------------------


def test_missing_file(tmp_path) -> None:
    expect_error(rwkv_hub.CheckpointError, tmp_path / "nope.pth")


def test_directory(tmp_path) -> None:
    expect_error(rwkv_hub.CheckpointError, tmp_path)


@pytest.mark.parametrize("name", ["x.pth", "x.safetensors", "x.bin", "x"])
def test_text_file(tmp_path, name) -> None:
    path = tmp_path / name
    path.write_text("this is a text file, not a model\n" * 20)
    expect_error(rwkv_hub.CheckpointError, path)


@pytest.mark.parametrize("name", ["x.pth", "x.safetensors"])
def test_empty_file(tmp_path, name) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    expect_error(rwkv_hub.CheckpointError, path)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.999])
def test_truncated_file(good, tmp_path, fraction) -> None:
    data = good.read_bytes()
    path = tmp_path / good.name
    path.write_bytes(data[: int(len(data) * fraction)])
    expect_error(rwkv_hub.CheckpointError, path)


def test_a_changed_byte_in_the_pickle_is_called_damage(good, tmp_path) -> None:
    """The zip's CRC catches it: the user is told to fetch the file again, not to re-save a state_dict."""
    if good.suffix != ".pth":
        pytest.skip("a .pth check")
    data = bytearray(good.read_bytes())
    entry = zipfile.ZipFile(good).infolist()[0]  # data.pkl comes first
    assert entry.filename.endswith("data.pkl")
    name_len, extra_len = struct.unpack_from("<HH", data, entry.header_offset + 26)  # the local header's
    data[entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2] ^= 0x5A
    path = tmp_path / good.name
    path.write_bytes(bytes(data))
    msg = expect_error(rwkv_hub.CheckpointError, path)
    assert "damaged" in msg and "again" in msg and "state_dict" not in msg


def test_zip_that_is_not_a_checkpoint(tmp_path) -> None:
    path = tmp_path / "x.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    expect_error(rwkv_hub.CheckpointError, path)


def test_legacy_non_zip_torch_save_format(tmp_path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save(random_state_dict(**SHAPE), path, _use_new_zipfile_serialization=False)
    expect_error(rwkv_hub.CheckpointError, path)


def test_pickle_that_is_not_a_state_dict(tmp_path) -> None:
    expect_error(rwkv_hub.CheckpointError, save_pth([torch.zeros(3)], tmp_path / "list.pth"))


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch exploit-ran",))


def test_pickle_with_code_is_refused_and_not_run(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = save_pth({"emb.weight": torch.zeros(4, 4), "evil": _Exploit()}, tmp_path / "evil.pth")
    expect_error(rwkv_hub.CheckpointError, path)
    assert not (tmp_path / "exploit-ran").exists()


@pytest.mark.parametrize(
    ("keys", "generation"),
    [
        (["blocks.0.att.time_maa_x", "blocks.0.att.time_decay", "blocks.0.att.time_faaaa"], "RWKV-6"),
        (["blocks.0.att.ln_x.weight", "blocks.0.att.time_decay", "blocks.0.att.time_first"], "RWKV-5.0"),
        (["blocks.0.att.time_first", "blocks.0.att.time_decay", "blocks.0.att.time_mix_k"], "RWKV-4"),
    ],
    ids=["rwkv6", "rwkv5.0", "rwkv4"],
)
def test_partial_checkpoint_of_another_generation_is_named(tmp_path, keys, generation) -> None:
    """A few tensors of an older generation: the error names it and the tensors it lacks."""
    c = 64
    sd = {"emb.weight": torch.zeros(32, c), "head.weight": torch.zeros(32, c)}
    sd.update({k: torch.zeros(c) for k in keys})
    msg = expect_error(rwkv_hub.CheckpointError, save_pth(sd, tmp_path / f"{generation}.pth"))
    assert f"incomplete {generation} checkpoint" in msg and "blocks.0.ln1.weight" in msg


def test_state_dict_that_is_not_rwkv(tmp_path) -> None:
    path = save_pth({"fc.weight": torch.zeros(4, 4), "fc.bias": torch.zeros(4)}, tmp_path / "mlp.pth")
    expect_error(rwkv_hub.CheckpointError, path)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_partial_checkpoint_names_the_missing_tensors(tmp_path, fmt) -> None:
    sd = random_state_dict(**SHAPE)
    gone = ["blocks.1.att.key.weight", "blocks.0.ffn.x_k", "head.weight"]
    for k in gone:
        del sd[k]
    path = tmp_path / f"partial.{fmt}"
    if fmt == "pth":
        save_pth(sd, path)
    else:
        from safetensors.torch import save_file

        save_file(dict(sd), str(path))
    msg = expect_error(rwkv_hub.CheckpointError, path)
    for k in gone:
        assert k in msg, msg


def test_missing_value_mix_of_a_later_layer_is_reported(tmp_path) -> None:
    sd = random_state_dict(**SHAPE)
    del sd["blocks.1.att.v1"]
    msg = expect_error(rwkv_hub.CheckpointError, save_pth(sd, tmp_path / "partial.pth"))
    assert "blocks.1.att.v1" in msg


@pytest.mark.parametrize(
    ("key", "shape"),
    [
        ("blocks.1.att.key.weight", (128, 129)),
        ("blocks.0.ffn.value.weight", (128, 256)),
        ("head.weight", (256, 64)),
        ("blocks.0.att.ln_x.weight", (64,)),
        ("blocks.1.att.w2", (32, 64)),
    ],
)
def test_wrong_shape_names_the_tensor(tmp_path, key, shape) -> None:
    sd = random_state_dict(**SHAPE)
    sd[key] = torch.zeros(shape, dtype=torch.bfloat16)
    msg = expect_error(rwkv_hub.CheckpointError, save_pth(sd, tmp_path / "shapes.pth"))
    assert key.rsplit(".", 1)[0] in msg, msg


def test_integer_weights_are_refused(tmp_path) -> None:
    sd = random_state_dict(**SHAPE)
    sd["blocks.0.att.key.weight"] = torch.zeros(128, 128, dtype=torch.int8)
    msg = expect_error(rwkv_hub.CheckpointError, save_pth(sd, tmp_path / "int.pth"))
    assert "blocks.0.att.key.weight" in msg


# --- strategies ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy", ["gpu fp32", "cpu fp64", "cpu", "", "fp32", "cpu fp32 extra", "cpu fp16", "cuda fp16 *10 -> cpu fp32"]
)
def test_unknown_or_unsupported_strategy(good, strategy) -> None:
    with pytest.raises(rwkv_hub.StrategyError) as e:
        rwkv_hub.load(good, strategy=strategy)
    assert isinstance(e.value, rwkv_hub.RWKVHubError)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("strategy", "advice"),
    [("cpu fp32 *6 -> cpu bf16", "'cpu bf16' or 'cpu fp32'"), ("cuda fp16 *10 -> cpu fp32", "'cuda fp16i8'")],
)
def test_an_official_split_strategy_gets_advice_for_its_devices(good, strategy, advice) -> None:
    """ChatRWKV users bring split strategies; an all-CPU one is not told to use CUDA."""
    with pytest.raises(rwkv_hub.StrategyError, match="splits the layers") as e:
        rwkv_hub.load(good, strategy=strategy)
    assert advice in str(e.value) and ("cuda" in str(e.value)) == ("cuda" in strategy)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("strategy", ["cuda fp16", "cuda bf16", "cuda fp16i8"])
def test_cuda_strategy_without_cuda(good, strategy) -> None:
    with pytest.raises(rwkv_hub.StrategyError) as e:
        rwkv_hub.load(good, strategy=strategy)
    assert "cuda" in str(e.value).lower() and "\n" not in str(e.value)


@needs_cuda
def test_cuda_device_that_is_not_there(good) -> None:
    with pytest.raises(rwkv_hub.StrategyError) as e:
        rwkv_hub.load(good, strategy=f"cuda:{torch.cuda.device_count()} fp16")
    assert "no CUDA device" in str(e.value) and "\n" not in str(e.value)


def test_errors_share_one_base_class() -> None:
    for exc in (rwkv_hub.CheckpointError, rwkv_hub.StrategyError, rwkv_hub.StateError):
        assert issubclass(exc, rwkv_hub.RWKVHubError)


@pytest.mark.parametrize("strategy", ["cpu fp32", "cpu bf16i8"])
def test_the_embedding_is_read_from_the_file_and_survives_a_replaced_file(good, tmp_path, strategy) -> None:
    """The embedding is read from the file on demand, not copied; replacing the file by rename (how
    downloads and `replace_file` update a model) leaves a loaded model as it was."""
    from rwkv_hub.core.atomic import replace_file
    from rwkv_hub.core.synth import write_random_checkpoint

    path = tmp_path / good.name
    path.write_bytes(good.read_bytes())
    model = rwkv_hub.load(path, strategy=strategy)
    assert model.emb.reader is not None and model.emb.table is None
    assert model.emb.dtype == torch.bfloat16  # as the file stores it, whatever the strategy
    tokens = random_tokens(12, SHAPE["vocab_size"], seed=2)
    before, _ = model.forward(tokens, None)
    other = write_random_checkpoint(tmp_path / f"other{good.suffix}", **SHAPE, seed=9)
    replace_file(path, lambda tmp: tmp.write_bytes(other.read_bytes()))
    after, _ = model.forward(tokens, None)
    assert torch.equal(before, after)
    assert not torch.equal(before, rwkv_hub.load(path, strategy=strategy).forward(tokens, None)[0])


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_reading_the_embedding_maps_no_part_of_the_file(good) -> None:
    """Rows are copied with positioned reads: a mapping of the file would also map each touched page's
    cached neighbours (fault-around), growing the process by 64 KB per new token instead of one row."""
    model = rwkv_hub.load(good, strategy="cpu fp32")
    model.forward(random_tokens(64, SHAPE["vocab_size"], seed=3), None)
    maps = Path("/proc/self/maps").read_text()
    assert str(good.resolve()) not in maps


def test_an_embedding_row_out_of_range_is_refused(good) -> None:
    model = rwkv_hub.load(good, strategy="cpu fp32")
    with pytest.raises(IndexError, match="out of range"):
        model.emb([0, SHAPE["vocab_size"]])
