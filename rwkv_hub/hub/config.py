"""The daemon's configuration file (TOML): every key, its type and default, validated with line numbers.

An unknown key or a value of the wrong type is an error that names the key and its line in the file,
so a typo never silently falls back to a default. `docs/config.md` documents every key.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..core.errors import RWKVHubError
from ..core.limits import EngineLimits

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DEFAULT_PORT = 8765
# The largest `limits.max_json_depth`: Python's JSON decoder itself gives up (a RecursionError) near 1,000
# levels less the server's own stack, so the limit stays well below that and a refusal names the real one.
MAX_JSON_DEPTH = 256


class ConfigError(RWKVHubError):
    """The configuration file is missing, unreadable or has a bad key or value."""


def config_dir() -> Path:
    """Where rwkv-hub keeps its own files (config, token, sessions): $XDG_CONFIG_HOME/rwkv-hub."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "rwkv-hub"


@dataclass
class Limits:
    """`[limits]`: the engine's bounds (defaults from `EngineLimits`, the one place they are set) and the
    server's."""

    max_active: int = EngineLimits.max_active
    max_queue: int = EngineLimits.max_queue
    max_prompt_tokens: int = EngineLimits.max_prompt_tokens
    max_new_tokens: int = EngineLimits.max_new_tokens
    prefill_chunk: int = EngineLimits.prefill_chunk
    prefill_budget: int = EngineLimits.prefill_budget
    cache_interval: int = EngineLimits.cache_interval
    max_message_bytes: int = 4 * 2**20
    max_json_depth: int = 32
    max_requests_per_connection: int = 16

    def engine(self) -> EngineLimits:
        """The engine's part; raises ValueError when the values do not fit together."""
        return EngineLimits(**{f.name: getattr(self, f.name) for f in fields(EngineLimits)})


@dataclass
class Config:
    model: str | None = None  # None: the built-in demo model
    strategy: str = "cpu bf16"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    allow_origins: list[str] = field(default_factory=list)
    cache_mb: int | None = None  # None: rwkv_hub.core.prefix_cache.default_budget
    session_folder: str | None = None  # None: <config dir>/sessions
    plugins: list[str] = field(default_factory=list)  # extra plugin modules to load
    disable_plugins: list[str] = field(default_factory=list)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> params overrides
    bots: dict[str, dict[str, Any]] = field(default_factory=dict)  # [bots.NAME]: each bot checks its own keys
    limits: Limits = field(default_factory=Limits)
    path: Path | None = None  # the file this came from

    def sessions_path(self) -> Path:
        return Path(self.session_folder).expanduser() if self.session_folder else config_dir() / "sessions"

    def compositions_path(self) -> Path:
        """Where the daemon saves compositions: beside the sessions folder."""
        return self.sessions_path().parent / "compositions"


# key -> (accepted types, description of the type for messages)
_TOP: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a path"),
    "strategy": ((str,), 'a strategy such as "cpu bf16"'),
    "host": ((str,), "a host name or address"),
    "port": ((int,), "a port number"),
    "allow_origins": ((list,), "a list of origins"),
    "cache_mb": ((int,), "a number of megabytes"),
    "session_folder": ((str,), "a folder"),
}
_TABLES = ("limits", "plugins", "presets", "bots")


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read a config file; no path means `<config dir>/config.toml` if it exists, else the defaults."""
    if path is None:
        default = config_dir() / "config.toml"
        if not default.exists():
            return Config()
        path = default
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read it ({e})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    return _build(data, text, p)


def _line(text: str, key: str, table: str | None = None) -> int | None:
    """The first line that sets `key` (inside `[table]` when given), for error messages."""
    lines = text.splitlines()
    start = 0
    if table:
        for i, line in enumerate(lines):
            if re.match(rf"\s*\[\s*{re.escape(table)}\s*\]", line):
                start = i + 1
                break
    for i in range(start, len(lines)):
        if re.match(rf"\s*\"?{re.escape(key)}\"?\s*=", lines[i]) or re.match(rf"\s*\[\s*{re.escape(key)}\b", lines[i]):
            return i + 1
    return None


def _where(p: Path, text: str, key: str, table: str | None = None) -> str:
    n = _line(text, key, table)
    return f"{p}, line {n}" if n else str(p)


def _check(p: Path, text: str, key: str, value: Any, types: tuple[type, ...], what: str, table=None) -> Any:
    if isinstance(value, bool) or not isinstance(value, types):
        name = f"{table}.{key}" if table else key
        raise ConfigError(f"{_where(p, text, key, table)}: {name} must be {what}, not {type(value).__name__}")
    return value


def _build(data: dict[str, Any], text: str, p: Path) -> Config:
    cfg = Config(path=p)
    for key, value in data.items():
        if key in _TOP:
            setattr(cfg, key, _check(p, text, key, value, *_TOP[key]))
        elif key not in _TABLES:
            known = ", ".join([*_TOP, *_TABLES])
            raise ConfigError(f"{_where(p, text, key)}: unknown key {key!r}; known keys: {known}")
    if not 0 <= cfg.port < 65536:
        raise ConfigError(f"{_where(p, text, 'port')}: port must be between 0 (any free port) and 65535")
    if cfg.cache_mb is not None and cfg.cache_mb < 0:
        raise ConfigError(f"{_where(p, text, 'cache_mb')}: cache_mb must be 0 or more megabytes (0: no cache)")
    for o in cfg.allow_origins:
        _check(p, text, "allow_origins", o, (str,), 'a list of origins such as "https://example.org"')
    limits = data.get("limits", {})
    _check(p, text, "limits", limits, (dict,), "a table")
    for key, value in limits.items():
        if not hasattr(cfg.limits, key):
            known = ", ".join(Limits.__dataclass_fields__)
            raise ConfigError(f"{_where(p, text, key, 'limits')}: unknown key limits.{key}; known: {known}")
        _check(p, text, key, value, (int,), "a whole number", "limits")
        if value < 1:
            raise ConfigError(f"{_where(p, text, key, 'limits')}: limits.{key} must be at least 1")
        if key == "max_json_depth" and value > MAX_JSON_DEPTH:
            raise ConfigError(f"{_where(p, text, key, 'limits')}: limits.{key} must be at most {MAX_JSON_DEPTH}")
        setattr(cfg.limits, key, value)
    try:
        cfg.limits.engine()
    except ValueError as e:  # e.g. a prefill budget smaller than a prefill chunk
        # The line of the first key the message names that the file sets, else the [limits] header.
        named = [w for w in re.findall(r"\w+", str(e)) if w in limits]
        where = _where(p, text, named[0], "limits") if named else _where(p, text, "limits")
        raise ConfigError(f"{where}: [limits]: {e}") from None
    plugins = data.get("plugins", {})
    _check(p, text, "plugins", plugins, (dict,), "a table")
    for key, value in plugins.items():
        if key not in ("modules", "disable"):
            raise ConfigError(f"{_where(p, text, key, 'plugins')}: unknown key plugins.{key}; known: modules, disable")
        _check(p, text, key, value, (list,), "a list of names", "plugins")
        for v in value:
            _check(p, text, key, v, (str,), "a list of names", "plugins")
    cfg.plugins = list(plugins.get("modules", []))
    cfg.disable_plugins = list(plugins.get("disable", []))
    presets = data.get("presets", {})
    _check(p, text, "presets", presets, (dict,), "a table of [presets.NAME] tables")
    from .presets import Preset, PresetError, check_params

    for name, params in presets.items():
        _check(p, text, name, params, (dict,), "a table of sampling parameters", "presets")
        try:  # name, parameter names, types and ranges: what serve would refuse, said here with the line
            checked = check_params(f"presets.{name}", params)
            cfg.presets[name] = dict(Preset(name, "from the config file", params=checked).params)
        except PresetError as e:
            raise ConfigError(f"{_where(p, text, f'presets.{name}')}: {e}") from None
    bots = data.get("bots", {})
    _check(p, text, "bots", bots, (dict,), "a table of [bots.NAME] tables")
    for name, table in bots.items():
        _check(p, text, name, table, (dict,), "a table of bot settings", "bots")
        if not isinstance(table.get("enabled", False), bool):
            where = _where(p, text, "enabled", f"bots.{name}")
            raise ConfigError(f"{where}: bots.{name}.enabled must be true or false")
        cfg.bots[name] = dict(table)
    return cfg
