"""Shared fixtures for the core runtime tests: tiny random checkpoints, our models, and the official package.

The official `rwkv` package (BlinkDL's) is the reference implementation. It reads its configuration from
environment variables when `rwkv.model` is first imported, so they are set here, before anything imports it.
Everything expensive is built once per session and cached: checkpoints are a few hundred KiB, models load
in milliseconds, and no test writes to a shared model or state.
"""

from __future__ import annotations

import os

os.environ["RWKV_V7_ON"] = "1"
os.environ["RWKV_JIT_ON"] = "1"
os.environ["RWKV_CUDA_ON"] = "0"

from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import rwkv_hub  # noqa: E402
from rwkv_hub.core.synth import write_random_checkpoint  # noqa: E402

# Figures worth seeing in CI logs (error sizes, agreement rates); printed in pytest's terminal summary.
FIGURES: dict[str, str] = {}


# Tests of the CUDA strategies; benchmarks/cuda_check.sh runs them on a GPU machine.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def record_figure(name: str, value: float | str) -> None:
    FIGURES[name] = f"{value:.3g}" if isinstance(value, float) else str(value)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if FIGURES:
        terminalreporter.section("rwkv-hub runtime figures")
        for name in sorted(FIGURES):
            terminalreporter.write_line(f"{name}: {FIGURES[name]}")


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max|ours - ref| / max|ref|, the error measure of the acceptance criteria."""
    ours = ours.detach().float().cpu()
    ref = ref.detach().float().cpu()
    assert ours.shape == ref.shape, f"shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
    assert torch.isfinite(ours).all(), "non-finite values"
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def random_tokens(n: int, vocab_size: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randint(0, vocab_size, (n,), generator=g).tolist()


def state_snapshot(state: rwkv_hub.State) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.tensors().items()}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str = "state") -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, f"{what} {k}: shape {tuple(a[k].shape)} vs {tuple(b[k].shape)}"
        assert torch.equal(a[k], b[k]), f"{what} {k} differs by {(a[k] - b[k]).abs().max().item()}"


def strategy_name(model: rwkv_hub.Model) -> str:
    """The model's strategy as a string, whether it is kept as a string or as a parsed object with `.name`."""
    s = model.strategy
    return s if isinstance(s, str) else s.name


class Official:
    """BlinkDL's `rwkv` package at "cpu fp32" on the same file, with a functional `forward` like ours.

    The official `forward` mutates the state list it is given and returns it, so states are cloned on the
    way in and out; a list of one token takes its single-token path, longer lists its sequence path.
    """

    def __init__(self, path: Path):
        from rwkv.model import RWKV

        assert path.suffix == ".pth", "the official package loads .pth files only"
        self.model = RWKV(model=str(path.with_suffix("")), strategy="cpu fp32")

    def forward(
        self, tokens: Sequence[int] | int, state: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        toks = [tokens] if isinstance(tokens, int) else list(tokens)
        st = None if state is None else [t.clone() for t in state]
        # Its per-token loop is hundreds of tiny ops; one thread runs them as fast as two on these sizes, and
        # does not stall when a shared CI machine's other core is busy. Our runtime keeps its own settings.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            logits, new = self.model.forward(toks, st)
        finally:
            torch.set_num_threads(threads)
        return logits.detach().float().clone(), [t.detach().clone() for t in new]


CheckpointFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory: pytest.TempPathFactory) -> CheckpointFactory:
    """make(n_layer=, n_embd=, vocab_size=, head_size=64, fmt="pth", layer0_v=False, dtype=bf16, seed=0,
    generation="x070") -> Path."""
    root = tmp_path_factory.mktemp("checkpoints")
    cache: dict[tuple, Path] = {}

    def make(
        *,
        n_layer: int,
        n_embd: int,
        vocab_size: int,
        head_size: int = 64,
        fmt: str = "pth",
        layer0_v: bool = False,
        dtype: torch.dtype = torch.bfloat16,
        seed: int = 0,
        generation: str = "x070",
    ) -> Path:
        key = (n_layer, n_embd, vocab_size, head_size, fmt, layer0_v, dtype, seed, generation)
        if key not in cache:
            dt = str(dtype).removeprefix("torch.")
            name = f"{generation}-L{n_layer}-C{n_embd}-V{vocab_size}-N{head_size}-{dt}-v0{int(layer0_v)}-s{seed}.{fmt}"
            cache[key] = write_random_checkpoint(
                root / name,
                n_layer=n_layer,
                n_embd=n_embd,
                vocab_size=vocab_size,
                head_size=head_size,
                layer0_v=layer0_v,
                dtype=dtype,
                seed=seed,
                generation=generation,
            )
        return cache[key]

    return make


@pytest.fixture(scope="session")
def official_factory() -> Callable[[Path], Official]:
    cache: dict[Path, Official] = {}

    def get(path: Path) -> Official:
        if path not in cache:
            cache[path] = Official(path)
        return cache[path]

    return get


@pytest.fixture(scope="session")
def model_factory() -> Callable[..., rwkv_hub.Model]:
    """get(path, strategy="cpu fp32") -> rwkv_hub.Model, loaded once per (path, strategy)."""
    cache: dict[tuple[Path, str], rwkv_hub.Model] = {}

    def get(path: Path, strategy: str = "cpu fp32") -> rwkv_hub.Model:
        if (path, strategy) not in cache:
            cache[(path, strategy)] = rwkv_hub.load(path, strategy=strategy)
        return cache[(path, strategy)]

    return get


def pytest_configure(config) -> None:
    # The official package is written with TorchScript, which this torch deprecates; that is not our concern.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script.*` is deprecated:DeprecationWarning")


class DaemonThread:
    """Real daemons on loopback, served from an event loop on a thread of its own, so a test can drive them
    with clients (or a Textual pilot) from its own thread and loop."""

    def __init__(self) -> None:
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    @staticmethod
    def hub(model: rwkv_hub.Model, sessions: Path, cache_bytes: int | None = None, limits=None):
        """Model, built-in plugins only (no entry points), sessions in `sessions`, an optional cache."""
        from rwkv_hub.core.engine import Engine
        from rwkv_hub.core.prefix_cache import PrefixCache
        from rwkv_hub.core.sessions import SessionStore
        from rwkv_hub.hub.hub import Hub
        from rwkv_hub.hub.plugins import PluginHost

        cache = PrefixCache(cache_bytes) if cache_bytes else None
        engine = Engine(model, limits, cache=cache, sessions=SessionStore(model.state_shape, sessions))
        return Hub(engine, PluginHost(entry_points=False).load())

    def start(self, hub, config, token: str):
        """Serve `hub` as `config` says (port 0: any free port); returns the running daemon (`.url`)."""
        import asyncio

        from rwkv_hub.adapters.daemon import start

        return asyncio.run_coroutine_threadsafe(start(config, token, hub), self.loop).result(60)

    def stop(self, running):
        """Stop a daemon; returns a concurrent future (`.result()` to wait, `asyncio.wrap_future` to await)."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(running.stop(), self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
