"""Tokenizers: the World one equals the official TRIE tokenizer byte for byte (C and pure Python alike), the 20B
one loads a tokenizers JSON, the choice of tokenizer per model, and streaming text that never splits a character."""

from __future__ import annotations

import importlib.util
import random
import shutil
from pathlib import Path

import pytest
from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import rwkv_hub
from rwkv_hub.core.tokenizer import (
    ByteTokenizer,
    NeoXTokenizer,
    StreamDecoder,
    TokenizerError,
    WorldTokenizer,
    detect,
    world_tokenizer,
)
from rwkv_hub.core.tokenizer.world import official_vocab_path

SHAPE = dict(n_layer=2, n_embd=128, head_size=64)

SAMPLES = [
    "",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "RWKV is an RNN with transformer-level LLM performance.\n\nUser: hi\n\nAssistant:",
    "你好，世界！我们今天去公园散步吧。龘靐齉爩",
    "こんにちは、世界。カタカナとひらがな、漢字まじり。ｈａｌｆ－ｗｉｄｔｈ ｶﾀｶﾅ",
    "안녕하세요 세계. Привет, мир. مرحبا بالعالم. नमस्ते दुनिया. ไทย",
    'def f(x: int) -> int:\n    """Doc."""\n    return {"a": [x ** 2 for _ in range(3)]}\n\t\tif x != 0:\n',
    "emoji 😀😃🙂👍🏽 👨‍👩‍👧‍👦 🇨🇳🇯🇵 ❤️ 𝄞 𠀀𪚥",
    " " * 300 + "\n" * 40 + "\t" * 17 + "\r\n" * 9 + " \n \n  x",
    "#" * 200 + "-" * 161 + "=" * 99 + "a" * 1000,
    "\x00\x01\x02 control \x7f\x1b[31m",
    "\u200b\u200d\ufeff e\u0301 combining, surrogates-free \U0010ffff",
]


@pytest.fixture(scope="module")
def official() -> TRIE_TOKENIZER:
    return TRIE_TOKENIZER(str(official_vocab_path()))


@pytest.fixture(scope="module")
def world() -> WorldTokenizer:
    return world_tokenizer()


@pytest.fixture(scope="module")
def world_py() -> WorldTokenizer:
    return WorldTokenizer(native=False)


def random_corpus(world: WorldTokenizer) -> list[bytes]:
    """Byte strings chosen to stress greedy matching: random token joins, random bytes, long runs."""
    rng = random.Random(7)
    vocab = [b for b in world._bytes if b]
    joined = b"".join(rng.choice(vocab) for _ in range(20000))
    uniform = bytes(rng.randrange(256) for _ in range(20000))
    alphabet = [b" ", b"\n", b"a", b"#", b"-", b"\xe4", b"\xbd", b"\xa0", b"\xf0\x9f", b"\x98\x80", b"\xff"]
    runs = b"".join(rng.choice(alphabet) * rng.choice([1, 2, 3, 64, 127, 128, 129, 300]) for _ in range(400))
    prose = " ".join(SAMPLES).encode() * 8
    shuffled = bytes(rng.sample(list(prose), len(prose)))
    return [joined, uniform, runs, prose, shuffled, *(bytes(rng.randrange(256) for _ in range(n)) for n in range(40))]


def test_world_uses_the_c_loop(world: WorldTokenizer, world_py: WorldTokenizer) -> None:
    """Where a compiler exists the C loop runs, so the equality tests below compare C and Python with the official."""
    assert not world_py.native
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: the pure-Python loop is used")
    assert world.native


@pytest.mark.parametrize("text", SAMPLES)
def test_world_text_matches_official(text: str, official, world, world_py) -> None:
    ids = official.encode(text)
    assert world.encode(text) == ids
    assert world_py.encode(text) == ids
    assert world.encode(text.encode()) == ids
    assert world.decode(ids) == official.decode(ids) == text
    assert world.decode_bytes(ids) == official.decodeBytes(ids)


def test_world_bytes_match_official(official, world, world_py) -> None:
    total = 0
    for data in random_corpus(world):
        ids = official.encodeBytes(data)
        assert world.encode(data) == ids
        assert world_py.encode(data) == ids
        assert world.decode_bytes(ids) == official.decodeBytes(ids) == data
        total += len(data)
    assert total > 200_000


def test_world_decode_invalid_utf8(world: WorldTokenizer) -> None:
    ids = world.encode(b"ok \xff\xfe \xe4\xbd")
    assert world.decode_bytes(ids) == b"ok \xff\xfe \xe4\xbd"
    assert world.decode(ids) == "ok \ufffd\ufffd \ufffd"
    assert world.decode([0]) == "" and world.decode_bytes([0, *world.encode("a")]) == b"a"
    for bad in (-1, 65530, 10**9):
        with pytest.raises(TokenizerError, match=str(bad)):
            world.decode([world.encode("a")[0], bad])


def test_byte_tokenizer() -> None:
    tok = ByteTokenizer()
    assert tok.encode("aé") == [97, 0xC3, 0xA9] and tok.encode(b"\xff") == [255]
    assert tok.decode(tok.encode("你好")) == "你好"
    assert tok.decode([0xFF, 97]) == "\ufffda" and tok.decode_bytes([0xFF]) == b"\xff"
    with pytest.raises(TokenizerError):
        tok.decode([256])


@pytest.fixture(scope="module")
def neox_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small byte-level BPE in the 20B tokenizer's format, trained here (the real file cannot be fetched)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([s for s in SAMPLES if s] * 3, trainer)
    tok.add_tokens(["  "])
    path = tmp_path_factory.mktemp("neox") / "20B_tokenizer.json"
    tok.save(str(path))
    return path


def test_neox_tokenizer(neox_json: Path) -> None:
    tok = NeoXTokenizer(neox_json)
    for text in SAMPLES:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.decode_bytes(ids) == text.encode()
    assert tok.decode([0]) == "" and tok.decode_bytes([0]) == b""  # the special <|endoftext|>
    assert tok.decode_bytes(tok.encode("a  b")) == b"a  b"
    with pytest.raises(TokenizerError, match="cannot read"):
        NeoXTokenizer(neox_json.with_name("missing.json"))


@pytest.mark.parametrize("bad", ["a\ud800b", 5, None, [104, 105]])
def test_every_tokenizer_refuses_what_is_not_text(bad, world, world_py, neox_json: Path) -> None:
    """A lone surrogate (JSON can carry one) or a non-text value is a TokenizerError, never a
    UnicodeEncodeError or, as `bytes(5)` would give, five NUL tokens."""
    for tok in (world, world_py, ByteTokenizer(), NeoXTokenizer(neox_json)):
        with pytest.raises(TokenizerError, match="surrogate" if isinstance(bad, str) else "text .str. or bytes"):
            tok.encode(bad)


@pytest.mark.parametrize(
    ("vocab", "expected"),
    [(128, "bytes"), (256, "bytes"), (65536, "world"), (65537, "world"), (50277, "20B"), (65535, "20B")]
    + [(257, "REMI"), (2175, "REMI"), (2176, "MIDI piano"), (20096, "MIDI music"), (50276, "MIDI music")],
)
def test_detect_from_vocabulary_size(vocab: int, expected: str) -> None:
    if expected in ("bytes", "world"):
        assert detect(vocab) == expected
    else:
        with pytest.raises(TokenizerError, match=rf"vocabulary {vocab} .*{expected}.*tokenizer="):
            detect(vocab)


def test_load_picks_the_tokenizer(checkpoint_factory, neox_json: Path) -> None:
    path = checkpoint_factory(vocab_size=256, **SHAPE)
    assert isinstance(rwkv_hub.load(path).tokenizer, ByteTokenizer)
    assert rwkv_hub.load(path, tokenizer="world").tokenizer is world_tokenizer()
    assert isinstance(rwkv_hub.load(path, tokenizer=f"20b:{neox_json}").tokenizer, NeoXTokenizer)
    mine = ByteTokenizer()
    assert rwkv_hub.load(path, tokenizer=mine).tokenizer is mine
    for bad, message in [("gpt2", "unknown tokenizer"), ("20b", "needs its JSON"), ("20b:/nowhere.json", "not found")]:
        with pytest.raises(TokenizerError, match=message):
            rwkv_hub.load(path, tokenizer=bad)
    with pytest.raises(TokenizerError, match="not int"):
        rwkv_hub.load(path, tokenizer=3)


def test_unknown_vocabulary_still_loads(checkpoint_factory) -> None:
    model = rwkv_hub.load(checkpoint_factory(vocab_size=1000, **SHAPE))
    model.forward([1, 999])
    with pytest.raises(TokenizerError, match="vocabulary 1000 .*REMI.*tokenizer="):
        _ = model.tokenizer


def test_sidecar_names_the_tokenizer(checkpoint_factory, neox_json: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    shutil.copy(checkpoint_factory(vocab_size=1000, **SHAPE), path)
    shutil.copy(neox_json, tmp_path / "20B_tokenizer.json")
    (tmp_path / "model.tokenizer").write_text("20b:20B_tokenizer.json\n")
    assert isinstance(rwkv_hub.load(path).tokenizer, NeoXTokenizer)
    (tmp_path / "model.tokenizer").write_text("world")
    assert rwkv_hub.load(path).tokenizer is world_tokenizer()
    assert isinstance(rwkv_hub.load(path, tokenizer="bytes").tokenizer, ByteTokenizer)  # the argument wins
    (tmp_path / "model.tokenizer").write_text("nonsense")
    with pytest.raises(TokenizerError, match="model.tokenizer: unknown tokenizer"):
        rwkv_hub.load(path)


def stream(tok, ids: list[int]) -> list[str]:
    dec = StreamDecoder(tok)
    return [dec.feed(i) for i in ids] + [dec.flush()]


def test_stream_never_splits_a_character(world: WorldTokenizer) -> None:
    byte = {b: world.encode(bytes([b]))[0] for b in range(256)}
    emoji = world.encode("😀")
    assert [world.decode_bytes([i]) for i in emoji] == [b"\xf0\x9f", b"\x98", b"\x80"]  # the vocabulary splits it
    assert stream(world, emoji) == ["", "", "😀", ""]
    assert stream(world, [byte[0xE4], byte[0xBD], byte[0xA0], *world.encode("好")]) == ["", "", "你", "好", ""]
    text = " ".join(SAMPLES)
    pieces = stream(world, world.encode(text))
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)


def test_stream_invalid_bytes(world: WorldTokenizer, neox_json: Path) -> None:
    byte = {b: world.encode(bytes([b]))[0] for b in range(256)}
    assert stream(world, [byte[0xFF], byte[97]]) == ["\ufffd", "a", ""]
    assert stream(world, [byte[0xE4], byte[97]]) == ["", "\ufffda", ""]
    assert stream(world, [byte[97], byte[0xE4], byte[0xBD]]) == ["a", "", "", "\ufffd"]
    neox = NeoXTokenizer(neox_json)
    assert "".join(stream(neox, neox.encode(SAMPLES[7]))) == SAMPLES[7]


def test_stream_joined_equals_decode(world: WorldTokenizer) -> None:
    for data in random_corpus(world)[5:]:
        ids = world.encode(data)
        assert "".join(stream(world, ids)) == world.decode(ids)


def test_benchmark_writes_its_section(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("bench_tokenizer", root / "benchmarks" / "bench_tokenizer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "RESULTS.md"
    out.write_text("# title\n\n<!-- bench:0.19b -->\nkept\n<!-- /bench:0.19b -->\n")
    assert bench.main(["--bytes", "20000", "--repeats", "1", "--output", str(out)]) == 0
    section = out.read_text().split("kept\n<!-- /bench:0.19b -->\n\n")[1]
    bench.write_section(out, section.strip())  # a rerun replaces the section
    text = out.read_text()
    assert text.startswith("# title\n\n<!-- bench:0.19b -->\nkept\n")
    assert text.count("<!-- bench:tokenizer -->") == 1 and "ids identical to the official tokenizer's: yes" in text
