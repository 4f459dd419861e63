"""Fixtures for testing rwkv-hub plugins with pytest (loaded automatically once rwkv-hub is installed).

- `rwkv_plugin_host(*modules)`: a strict `PluginHost` with the built-ins and the named plugin modules,
  so any fault in them fails the test.
- `rwkv_model`: the built-in demo model, loaded once per test session.
- `rwkv_hub_of(*modules)`: an async context manager giving a `Hub` whose engine runs the built-in model.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import pytest


@pytest.fixture
def rwkv_plugin_host() -> Callable:
    from rwkv_hub.hub.plugins import PluginHost

    def make(*modules: str):
        return PluginHost(modules, entry_points=False, strict=True).load()

    return make


@pytest.fixture(scope="session")
def rwkv_model():
    import rwkv_hub

    return rwkv_hub.load(strategy="cpu fp32")


@pytest.fixture
def rwkv_hub_of(rwkv_model, rwkv_plugin_host) -> Callable:
    from rwkv_hub.core.engine import Engine
    from rwkv_hub.hub.hub import Hub

    @contextlib.asynccontextmanager
    async def make(*modules: str) -> AsyncIterator[Hub]:
        async with Engine(rwkv_model) as engine:
            yield Hub(engine, rwkv_plugin_host(*modules))

    return make
