"""The config file: defaults, every key read, and unknown keys or wrong types named with their line."""

from __future__ import annotations

import os
import stat

import pytest

from rwkv_hub.core.errors import RWKVHubError
from rwkv_hub.hub.config import Config, ConfigError, load_config
from rwkv_hub.hub.token import get_token, token_path


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("RWKV_HUB_TOKEN", raising=False)
    return tmp_path


def write(tmp_path, text: str):
    p = tmp_path / "rwkv-hub.toml"
    p.write_text(text)
    return p


def test_no_file_means_defaults():
    cfg = load_config()
    assert cfg == Config() and cfg.host == "127.0.0.1" and cfg.model is None


def test_every_key_is_read(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            'model = "m.pth"\nstrategy = "cpu fp32"\nport = 9000\nallow_origins = ["https://a.example"]\n'
            'cache_mb = 128\nsession_folder = "/tmp/s"\n[limits]\nmax_active = 4\nmax_new_tokens = 100\n'
            '[plugins]\nmodules = ["my_plugin"]\ndisable = ["other"]\n[presets.chat]\ntemperature = 0.8\n',
        )
    )
    assert (cfg.model, cfg.strategy, cfg.port, cfg.allow_origins) == ("m.pth", "cpu fp32", 9000, ["https://a.example"])
    assert (cfg.cache_mb, cfg.session_folder, cfg.limits.max_active, cfg.limits.max_new_tokens) == (
        128,
        "/tmp/s",
        4,
        100,
    )
    assert (cfg.plugins, cfg.disable_plugins, cfg.presets) == (["my_plugin"], ["other"], {"chat": {"temperature": 0.8}})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('model = "x"\nmodle = "y"\n', "line 2: unknown key 'modle'"),
        ('port = "80"\n', "line 1: port must be a port number, not str"),
        ("port = 65536\n", "line 1: port must be between 0"),
        ('model = "x"\ncache_mb = -1\n', "line 2: cache_mb must be 0 or more megabytes"),
        ("\n[limits]\nmax_activ = 3\n", "line 3: unknown key limits.max_activ"),
        ("[limits]\nmax_active = true\n", "line 2: limits.max_active must be a whole number, not bool"),
        ("[limits]\nmax_queue = 0\n", "limits.max_queue must be at least 1"),
        ("[plugins]\nenable = []\n", "unknown key plugins.enable"),
        ("\n[limits]\nprefill_budget = 32\n", "line 3: \\[limits\\]: prefill_budget must be at least prefill_chunk"),
        ("[limits]\ncache_interval = 100\n", "line 2: \\[limits\\]: cache_interval must be a multiple"),
        ("[limits]\nmax_json_depth = 5000\n", "line 2: limits.max_json_depth must be at most 256"),
        ("[presets.chat]\ntemprature = 1\n", "line 1: presets.chat: unknown parameter 'temprature'"),
        ("[presets.chat]\ntop_p = 7\n", "line 1: preset 'chat': top_p = 7 is out of range"),
        ("\n[presets.MyOwn]\ntop_p = 0.5\n", "line 2: preset name 'MyOwn': use 1-64 lowercase letters"),
        ("model = \n", "not valid TOML"),
    ],
)
def test_bad_files_name_the_key_and_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(write(tmp_path, text))


def test_port_zero_means_any_free_port(tmp_path):
    assert load_config(write(tmp_path, "port = 0\n")).port == 0


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


def test_token_is_made_once_owner_only_and_can_be_overridden(monkeypatch):
    t = get_token()
    assert len(t) >= 40 and get_token() == t
    assert stat.S_IMODE(os.stat(token_path()).st_mode) == 0o600
    monkeypatch.setenv("RWKV_HUB_TOKEN", "from-env")
    assert get_token() == "from-env" and get_token("explicit") == "explicit"


def test_an_empty_or_unreadable_token_file_is_a_clear_error(monkeypatch):
    """A blank file once read as "no token": the daemon started and answered every request 500."""
    monkeypatch.delenv("RWKV_HUB_TOKEN", raising=False)
    token_path().parent.mkdir(parents=True, exist_ok=True)
    token_path().write_text("\n")
    with pytest.raises(RWKVHubError, match="is empty; delete it"):
        get_token()
    token_path().unlink()
    token_path().mkdir()
    with pytest.raises(RWKVHubError, match="cannot read the token file"):
        get_token()
