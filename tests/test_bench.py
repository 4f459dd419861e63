"""Smoke tests of `rwkv_hub.bench` and `rwkv-hub bench`: the figures exist and are positive (no timing assertions)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

import rwkv_hub
from rwkv_hub import bench
from rwkv_hub.core.synth import write_random_checkpoint

SHAPE = {"n_layer": 2, "n_embd": 128, "vocab_size": 256, "head_size": 64}
SMALL = ["--prompt-tokens", "8", "--decode-tokens", "3", "--batch", "1,2", "--repeats", "2"]
FIGURES = ("decode_tok_s", "prefill_tok_s", "weight_bytes", "peak_rss_bytes")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("bench") / "tiny.pth", **SHAPE)


def rwkv_hub_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rwkv_hub", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def cli_has_bench() -> bool:
    from rwkv_hub.cli import build_parser

    try:
        build_parser().parse_args(["bench", "--model", "x"])
    except SystemExit:
        return False
    return True


needs_cli = pytest.mark.skipif(not cli_has_bench(), reason="rwkv_hub/cli.py has no `bench` subcommand yet")


@pytest.mark.parametrize("strategy", ["cpu fp32", "cpu bf16i8"])
def test_measure_returns_positive_figures(tiny: Path, strategy: str) -> None:
    model = rwkv_hub.load(tiny, strategy)
    r = bench.measure(model, prompt_tokens=8, decode_tokens=3, batches=[1, 2], repeats=2)
    for key in FIGURES:
        assert r[key] > 0, key
    assert r["weight_bytes"] == model.weight_bytes
    assert set(r["aggregate_tok_s"]) == {"1", "2"}
    assert all(v > 0 for v in r["aggregate_tok_s"].values())
    assert len(r["decode_tok_s_runs"]) == len(r["prefill_tok_s_runs"]) == 2
    assert all(len(v) == 2 for v in r["aggregate_tok_s_runs"].values())
    assert (r["prompt_tokens"], r["decode_tokens"], r["repeats"]) == (8, 3, 2)
    json.dumps(r)  # the report must be JSON-serialisable as it is


def test_timings_wait_for_the_gpu_and_report_its_peak(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA kernels finish after their launch returns: each timed run waits for queued GPU work before its
    clock starts and before it stops, and a run that used the GPU reports the GPU's peak memory."""
    import torch

    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: events.append("sync"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 12345)
    bench._timed(lambda: events.append("work"))
    assert events == ["sync", "work", "sync"]
    r = bench.measure(rwkv_hub.load(tiny), prompt_tokens=8, decode_tokens=3, batches=[1], repeats=1)
    assert r["peak_gpu_bytes"] == 12345


def test_parse_batches() -> None:
    assert bench.parse_batches("1, 4,16,4") == [1, 4, 16]
    for bad in ("", "0", "1,x", "-2"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_batches(bad)


def test_run_and_table(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--model", str(tiny), "--strategy", "cpu bf16", *SMALL])
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    for text in ("decode, 1 sequence", "prefill, 8 tokens", "decode, batch 2", "peak RSS", "tok/s"):
        assert text in out


def test_run_missing_model_raises_user_error(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--model", str(tmp_path / "nope.pth"), *SMALL])
    with pytest.raises(rwkv_hub.RWKVHubError):
        bench.run(args)


@needs_cli
def test_cli_bench_json(tiny: Path) -> None:
    result = rwkv_hub_cli("bench", "--model", tiny, "--strategy", "cpu fp32", "--json", *SMALL)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in FIGURES:
        assert report[key] > 0, key
    assert report["load_s"] > 0
    assert report["strategy"] == "cpu fp32"
    assert (report["n_layer"], report["n_embd"], report["vocab_size"]) == (2, 128, 256)
    assert report["sparse_ffn_layers"] == 0  # random weights: value matrices keep their layout (core/sparse_ffn.py)
    assert set(report["aggregate_tok_s"]) == {"1", "2"}


@needs_cli
def test_cli_bench_missing_model(tmp_path: Path) -> None:
    result = rwkv_hub_cli("bench", "--model", tmp_path / "nope.pth", "--strategy", "cpu fp32", "--json")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("rwkv-hub: error: ")
    assert "nope.pth" in result.stderr


def _bench_runtime():
    """benchmarks/bench_runtime.py as a module (it imports its neighbours from benchmarks/)."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("bench_runtime", root / "benchmarks" / "bench_runtime.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(root / "benchmarks"))
    return mod


def test_bench_runtime_rounds_combine_to_medians_and_peaks() -> None:
    """benchmarks/bench_runtime.py --rounds: speeds are the median of the rounds, memory the largest, every
    run is kept, and a failed round does not hide the others."""
    mod = _bench_runtime()

    def one(speed: float, rss: int) -> dict:
        return {
            "decode_tok_s": speed,
            "aggregate_tok_s": {"16": 10 * speed},
            "decode_tok_s_runs": [speed],
            "peak_rss_bytes": rss,
            "strategy": "cpu fp32",
            "prompt_tokens": 512,
        }

    assert repr(mod.combine_rounds([one(30.0, 5), one(10.0, 9)])["prompt_tokens"]) == "512"  # not 512.0 in the table
    got = mod.combine_rounds([one(30.0, 5), {"error": "exit 1"}, one(10.0, 9), one(20.0, 7)])
    assert got == {
        "decode_tok_s": 20.0,
        "aggregate_tok_s": {"16": 200.0},
        "decode_tok_s_runs": [30.0, 10.0, 20.0],
        "peak_rss_bytes": 9,
        "strategy": "cpu fp32",
        "prompt_tokens": 512,
    }
    assert mod.combine_rounds([{"error": "exit 1"}]) == {"error": "exit 1"}


def test_read_bandwidth_is_a_plausible_rate() -> None:
    """Bytes per second of a real sum over 64 MiB: more than 100 MB/s and less than 10 TB/s on any machine
    this runs on (a wrong unit or a wrong byte count is off by a factor of 4 or 1000 or more)."""
    rate = bench.read_bandwidth_bytes_per_s(64 * 2**20, repeats=2)
    assert 1e8 < rate < 1e13


def test_bench_runtime_reports_the_bandwidth_ceiling_of_decode() -> None:
    """With a measured bandwidth, each strategy's ceiling is bandwidth / (weights - the mapped embedding)."""
    mod = _bench_runtime()
    _, n_embd, vocab = mod.SHAPES["0.19b"]
    mapped = vocab * n_embd * 2
    row = {
        "decode_tok_s": 50.0,
        "prefill_tok_s": 100.0,
        "prompt_tokens": 512,
        "weight_bytes": mapped + 200_000_000,
        "peak_rss_bytes": 10**9,
        "aggregate_tok_s": {"16": 500.0},
    }
    lines = mod.verdicts("0.19b", {("rwkv-hub", "cpu bf16"): row}, [1, 16], 20e9)
    ceiling = next(x for x in lines if "GB/s" in x)
    assert "20.0 GB/s" in ceiling and "cpu bf16 100 (reached 50%)" in ceiling
    assert not any("GB/s" in x for x in mod.verdicts("0.19b", {("rwkv-hub", "cpu bf16"): row}, [1, 16]))
