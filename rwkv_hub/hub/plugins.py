"""Finding, loading and calling plugins, with every plugin's faults kept to itself.

Plugins come from three places, in rising precedence: rwkv-hub's built-ins, the entry-point group
`rwkv_hub` (pip-installed packages), and modules named in the config file. Each is loaded on its own: one
that fails to import, registers something malformed, misspells a hook or raises inside one is recorded
in `failures` (and logged) and skipped, and the rest go on. `RWKV_HUB_STRICT_PLUGINS=1` turns faults
into errors (for plugin authors and CI); `RWKV_HUB_PLUGINS=a,b` loads only the named third-party plugins
(set but empty: none), so a broken plugin can always be bypassed.

Plugin code that runs for a request is called through `Calls` (which remembers what is running) and,
unless it is all built in, in a thread of its own through `run_bounded`, so a slow plugin cannot stall the
daemon's event loop. Its failures are kept to one `PluginFailure` per plugin and stage, with a count.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from .. import hookspecs
from ..core.errors import RWKVHubError
from .completion import PREFIX_FORMAT, CompletionError, CompletionFormat
from .formats import FormatError, PromptFormat
from .presets import Preset, PresetError, sampling

if TYPE_CHECKING:
    from .config import Config

GROUP = "rwkv_hub"
STRICT_ENV = "RWKV_HUB_STRICT_PLUGINS"
ALLOW_ENV = "RWKV_HUB_PLUGINS"
BUILTIN = "built-in"
ENTRY_POINT = "entry point"
CONFIG = "config"
PRECEDENCE = {BUILTIN: 0, ENTRY_POINT: 1, CONFIG: 2}
TIMEOUT_S = 10.0  # how long plugin code may take for one request before the request fails
_TENFOLD = {10**k for k in range(1, 10)}  # the counts at which a repeated failure is logged again
KINDS = (
    "formats",
    "presets",
    "commands",
    "initial_states",
    "logit_processors",
    "stream_filters",
    "completion_formats",
    "bots",
)
log = logging.getLogger("rwkv_hub")


class PluginError(RWKVHubError):
    """A plugin failed and strict mode is on."""


class PluginTimeout(RWKVHubError):
    """A plugin's code for a request did not return within the time bound; the request failed."""


T = TypeVar("T")


@dataclass
class PluginInfo:
    name: str
    source: str
    version: str | None
    module: str
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class PluginFailure:
    plugin: str
    source: str
    stage: str  # "import", "hooks", the hook that raised, or the plugin code that failed on a request
    error: str  # the latest
    count: int = 1  # how often: a stage that runs per request fails once per request


@dataclass
class Command:
    name: str
    help: str
    configure: Callable[[Any], None]
    run: Callable[[Any], int]


@dataclass
class InitialState:
    name: str
    path: str
    description: str


@dataclass(frozen=True)
class BotEntry:
    name: str
    factory: Callable[..., Any]
    description: str = ""


@dataclass
class Registered:
    value: Any
    plugin: str
    source: str


class Calls:
    """Calls into plugins for one request: `calls(plugin, stage, fn, *args)` is `fn(*args)`, remembering
    which plugin code is running, so that a request past its time bound fails naming it."""

    def __init__(self) -> None:
        self.now: tuple[str, str] | None = None

    def __call__(self, plugin: str, stage: str, fn: Callable[..., T], *args: Any) -> T:
        self.now = (plugin, stage)
        try:
            return fn(*args)
        finally:
            self.now = None


class PluginHost:
    """Loads plugins once and holds what they registered; `load()` is safe to call on a fresh host only."""

    def __init__(
        self,
        config_modules: Iterable[str] = (),
        *,
        strict: bool | None = None,
        allow: Iterable[str] | None = None,
        disable: Iterable[str] = (),
        entry_points: bool = True,
        timeout_s: float = TIMEOUT_S,
    ):
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.config_modules = list(config_modules)
        self.strict = strict if strict is not None else os.environ.get(STRICT_ENV, "") not in ("", "0")
        if allow is None and ALLOW_ENV in os.environ:
            allow = [a.strip() for a in os.environ[ALLOW_ENV].split(",") if a.strip()]
        self.allow = None if allow is None else set(allow)
        self.disable = set(disable)
        self.use_entry_points = entry_points
        self.timeout_s = timeout_s
        self._lock = threading.Lock()  # request faults are recorded from plugin threads too
        self._repeats: dict[tuple[str, str], PluginFailure] = {}
        self.plugins: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self.warnings: list[str] = []
        self.registry: dict[str, dict[str, Registered]] = {k: {} for k in KINDS}

    # --- what was registered ------------------------------------------------------------------------------

    @property
    def formats(self) -> dict[str, PromptFormat]:
        return {k: r.value for k, r in self.registry["formats"].items()}

    @property
    def presets(self) -> dict[str, Preset]:
        return {k: r.value for k, r in self.registry["presets"].items()}

    @property
    def commands(self) -> dict[str, Command]:
        return {k: r.value for k, r in self.registry["commands"].items()}

    @property
    def initial_states(self) -> dict[str, InitialState]:
        return {k: r.value for k, r in self.registry["initial_states"].items()}

    @property
    def logit_processors(self) -> dict[str, Callable]:
        return {k: r.value for k, r in self.registry["logit_processors"].items()}

    @property
    def stream_filters(self) -> dict[str, Callable]:
        return {k: r.value for k, r in self.registry["stream_filters"].items()}

    @property
    def completion_formats(self) -> dict[str, CompletionFormat]:
        return {k: r.value for k, r in self.registry["completion_formats"].items()}

    @property
    def bots(self) -> dict[str, BotEntry]:
        return {k: r.value for k, r in self.registry["bots"].items()}

    def completion_format(self, name: str | None, language: str | None = None) -> CompletionFormat:
        """The named completion format; without a name, the one registered for `language` (the highest
        precedence, then the last registered), else the built-in `prefix`."""
        table = self.registry["completion_formats"]
        if name:
            if name not in table:
                known = ", ".join(sorted(table)) or "none"
                raise CompletionError(f"unknown completion format {name!r}; known: {known}")
            return table[name].value
        lang = (language or "").lower()
        claims = [r for r in table.values() if lang and lang in r.value.languages]
        if claims:
            return max(enumerate(claims), key=lambda ir: (PRECEDENCE[ir[1].source], ir[0]))[1].value
        return table["prefix"].value if "prefix" in table else PREFIX_FORMAT

    def format(self, name: str) -> PromptFormat:
        if not isinstance(name, str):
            raise FormatError(f"format must be a format name (text), not {type(name).__name__}")
        try:
            return self.registry["formats"][name].value
        except KeyError:
            raise FormatError(f"unknown format {name!r}; known: {', '.join(sorted(self.formats))}") from None

    def preset(self, name: str) -> Preset:
        if not isinstance(name, str):
            raise PresetError(f"preset must be a preset name (text), not {type(name).__name__}")
        try:
            return self.registry["presets"][name].value
        except KeyError:
            raise PresetError(f"unknown preset {name!r}; known: {', '.join(sorted(self.presets))}") from None

    def owner(self, kind: str, name: str) -> str:
        """The plugin whose registration of `name` is in use (the built-ins' for a fallback)."""
        entry = self.registry[kind].get(name)
        return entry.plugin if entry is not None else "builtin"

    def is_builtin(self, plugin: str) -> bool:
        info = self.plugins.get(plugin)
        return info is not None and info.source == BUILTIN

    def hook_plugins(self, hook: str) -> list[str]:
        """The plugins implementing `hook`, in the order they are called."""
        return [impl.plugin_name for impl in getattr(self.pm.hook, hook).get_hookimpls()]

    # --- loading --------------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Config) -> PluginHost:
        """The plugins a daemon with `config` serves, loaded: its modules, without its disabled names, with
        its preset overrides. A bad override raises (PresetError): the daemon does not start on it."""
        host = cls(config.plugins, disable=config.disable_plugins).load()
        for name, params in config.presets.items():
            host.override_preset(name, params)
        return host

    def load(self) -> PluginHost:
        from ..plugins import builtin

        if "builtin" not in self.disable:
            self._add(builtin, "builtin", BUILTIN, None)
        known = {"builtin", *self.config_modules}
        if self.use_entry_points:
            for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
                known.add(ep.name)
                if self.allow is not None and ep.name not in self.allow or ep.name in self.disable:
                    continue
                version = ep.dist.version if ep.dist is not None else None
                self._add_lazily(lambda ep=ep: ep.load(), ep.name, ENTRY_POINT, version)
        for mod in self.config_modules:
            if self.allow is not None and mod not in self.allow or mod in self.disable:
                continue
            self._add_lazily(lambda mod=mod: importlib.import_module(mod), mod, CONFIG, None)
        for name in sorted(self.disable - known):  # most likely a typo: say so rather than ignore it
            msg = f"plugins.disable names {name!r}, which no plugin is called; nothing was disabled"
            self.warnings.append(msg)
            log.warning(msg)
        self._check_hooks()
        self._collect("register_formats", "formats", _as_format, _check_format)
        self._collect("register_presets", "presets", _as_preset, self._check_preset)
        self._collect("register_commands", "commands", _as_command)
        self._collect("register_initial_states", "initial_states", _as_initial_state)
        self._collect("register_logit_processors", "logit_processors", _as_callable("logit processor"))
        self._collect("register_stream_filters", "stream_filters", _as_callable("stream filter"))
        self._collect("register_completion_formats", "completion_formats", _as_completion_format)
        self._collect("register_bots", "bots", _as_bot)
        return self

    def _add_lazily(self, importer: Callable[[], Any], name: str, source: str, version: str | None) -> None:
        try:
            obj = importer()
        except Exception as e:  # an import error of any kind is the plugin's fault
            self._fault(name, source, "import", e, "the plugin was not loaded")
            return
        self._add(obj, name, source, version)

    def _add(self, obj: Any, name: str, source: str, version: str | None) -> None:
        if name in self.plugins:
            self._fault(
                name,
                source,
                "import",
                RWKVHubError(f"a plugin named {name!r} is already loaded"),
                "this one was not loaded",
            )
            return
        try:
            self.pm.register(obj, name=name)
        except Exception as e:  # pluggy validates signatures against the specs here
            self._fault(name, source, "hooks", e, "the plugin was not loaded")
            return
        module = getattr(obj, "__name__", type(obj).__name__)
        hooks = sorted(h.name for h in self.pm.get_hookcallers(obj) or ())
        self.plugins[name] = PluginInfo(name, source, version, module, hooks, {k: [] for k in KINDS})

    def _check_hooks(self) -> None:
        """Functions marked as hooks whose names are no hook (misspellings) fault their plugin."""
        for name, plugin in list(self.pm.list_name_plugin()):
            for attr in dir(plugin):
                fn = getattr(plugin, attr, None)
                if callable(fn) and hasattr(fn, f"{GROUP}_impl") and not hasattr(hookspecs, attr):
                    err = RWKVHubError(f"{attr!r} is marked as a hook but rwkv-hub has no hook of that name")
                    self._fault(name, self.plugins[name].source, "hooks", err, "the plugin was not loaded")
                    self.pm.unregister(plugin)
                    self.plugins.pop(name, None)
                    break

    def _collect(
        self,
        hook: str,
        kind: str,
        convert: Callable[[tuple, dict], tuple[str, Any]],
        check: Callable[[Any], None] = lambda value: None,
    ) -> None:
        """Call `hook` on every plugin; `convert` turns what it hands `register` into an entry (a failure
        drops all that hook registered), and `check` refuses one entry on its own (that entry is dropped)."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            name = impl.plugin_name
            info = self.plugins[name]
            staged: list[tuple[str, Any]] = []

            def register(*args, _staged=staged, **kwargs) -> None:
                _staged.append(convert(args, kwargs))

            try:
                impl.function(*(register for _ in impl.argnames))
            except Exception as e:  # a bad registration or a raising hook: drop all this hook registered
                self._fault(name, info.source, hook, e, "all this hook registered was dropped")
                continue
            for key, value in staged:
                try:
                    check(value)
                except Exception as e:  # a malformed entry: the plugin's other entries still count
                    self._fault(name, info.source, hook, e, f"{kind[:-1]} {key!r} was not registered")
                    continue
                self._put(kind, key, Registered(value, name, info.source))
                info.registered[kind].append(key)

    def _check_preset(self, preset: Preset) -> None:
        """A preset's format must exist (formats are collected before presets)."""
        if preset.format is not None and preset.format not in self.registry["formats"]:
            raise PresetError(f"preset {preset.name!r} names format {preset.format!r}, which no plugin registers")

    def _put(self, kind: str, key: str, new: Registered) -> None:
        table = self.registry[kind]
        old = table.get(key)
        if old is not None:
            keep_new = PRECEDENCE[new.source] >= PRECEDENCE[old.source]
            winner, loser = (new, old) if keep_new else (old, new)
            msg = (
                f"{kind[:-1].replace('_', ' ')} {key!r} is registered by {old.plugin} ({old.source}) and "
                f"{new.plugin} ({new.source}); using {winner.plugin}'s"
            )
            self.warnings.append(msg)
            log.warning(msg)
            if not keep_new:
                return
        table[key] = new

    def _fault(self, plugin: str, source: str, stage: str, error: BaseException, consequence: str) -> None:
        text = f"{type(error).__name__}: {error}"
        if self.strict:
            raise PluginError(f"plugin {plugin} ({source}) failed in {stage}: {text}") from error
        self.failures.append(PluginFailure(plugin, source, stage, text))
        log.warning("plugin %s (%s) failed in %s: %s; %s", plugin, source, stage, text, consequence)

    def request_fault(self, plugin: str, stage: str, error: BaseException, consequence: str = "") -> None:
        """Plugin code failed while serving (a request, or a daemon start or stop); it stays in use and is
        called again the next time. One PluginFailure per plugin and stage keeps the latest error and a
        count; the first failure is logged in full, then every tenfold count, so a hook that fails on every
        request can neither flood the log nor grow `failures` without end."""
        info = self.plugins.get(plugin)
        source = info.source if info is not None else "?"
        text = f"{type(error).__name__}: {error}"
        if self.strict:
            raise PluginError(f"plugin {plugin} ({source}) failed in {stage}: {text}") from error
        with self._lock:
            failure = self._repeats.get((plugin, stage))
            if failure is None:
                failure = self._repeats[plugin, stage] = PluginFailure(plugin, source, stage, text)
                self.failures.append(failure)
            else:
                failure.count += 1
                failure.error = text
            count = failure.count
        if count == 1:
            then = f"{consequence}; " if consequence else ""
            log.warning(
                "plugin %s (%s) failed in %s: %s; %sit is called again the next time (later failures are counted)",
                *(plugin, source, stage, text, then),
            )
            log.debug("what plugin %s raised in %s", plugin, stage, exc_info=error)
        elif count in _TENFOLD:
            log.warning("plugin %s (%s) has failed in %s %d times; the latest: %s", plugin, source, stage, count, text)

    # --- calling per-request hooks ---------------------------------------------------------------------------

    def call(self, hook: str, **kwargs: Any) -> None:
        """Call a notification hook on every plugin; a plugin that raises is reported, the others still run."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                impl.function(*(kwargs[a] for a in impl.argnames))
            except Exception as e:  # the plugin's fault, not the request's
                self.request_fault(impl.plugin_name, hook, e)

    def prepare(self, request: dict[str, Any], check: Callable[[dict[str, Any]], None], calls: Calls) -> dict[str, Any]:
        """Every plugin's `prepare_request` in turn, each on its own copy of the request: a hook that raises,
        or leaves a request that `check` refuses, is reported and its changes are dropped, so the request
        runs as if that plugin were not there."""
        for impl in self.pm.hook.prepare_request.get_hookimpls():
            draft = copy.deepcopy(request)
            try:
                calls(impl.plugin_name, "prepare_request", impl.function, *(draft for _ in impl.argnames))
                check(draft)
            except Exception as e:  # the plugin's fault, not the request's
                self.request_fault(impl.plugin_name, "prepare_request", e, "its changes to the request were dropped")
                continue
            request = draft
        return request

    async def run_bounded(self, job: Callable[[Calls], T], then: str = "the request was not run") -> T:
        """`job(calls)` in a thread of its own, awaited for at most `timeout_s`: past that it raises a
        PluginTimeout naming the plugin code that was running, and `then`, what becomes of the request.
        Python cannot stop a thread, so a hook that never returns keeps its thread (a daemon thread: it does
        not hold up shutdown)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        calls = Calls()

        def settle(result: Any, error: BaseException | None) -> None:
            if not done.done():  # not given up on already
                done.set_exception(error) if error is not None else done.set_result(result)

        def work() -> None:
            try:
                result, error = job(calls), None
            except BaseException as e:  # handed to the awaiting request
                result, error = None, e
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:  # the loop has closed: nobody is waiting
                pass

        threading.Thread(target=work, name="rwkv-hub-plugin", daemon=True).start()
        try:
            return await asyncio.wait_for(done, self.timeout_s)
        except TimeoutError:
            plugin, stage = calls.now or ("?", "the request's preparation")
            err = PluginTimeout(f"plugin {plugin} did not return from {stage} within {self.timeout_s:g} s; {then}")
            self.request_fault(plugin, stage, err, "the call goes on in its thread")
            raise err from None

    def override_preset(self, name: str, params: dict[str, Any]) -> Preset:
        """The config file's `[presets.NAME]`: change a preset's parameters, or add a preset."""
        base = self.presets.get(name)
        if base is None:
            preset = Preset(name, "from the config file", "", None, params)
        else:
            preset = Preset(name, base.description, base.description_zh, base.format, {**base.params, **params})
        self.registry["presets"][name] = Registered(preset, "config file", CONFIG)
        return preset

    def report(self) -> dict[str, Any]:
        """What `rwkv-hub plugins --json` prints."""
        return {
            "plugins": [
                {
                    "name": p.name,
                    "source": p.source,
                    "version": p.version,
                    "module": p.module,
                    "hooks": p.hooks,
                    "registered": {k: v for k, v in p.registered.items() if v},
                }
                for p in self.plugins.values()
            ],
            "failures": [f.__dict__ for f in self.failures],
            "warnings": list(self.warnings),
        }


# --- converting what plugins hand to `register` -------------------------------------------------------------


def _check_format(fmt: PromptFormat) -> None:
    """A format's defaults are sampling parameters of the right names, types and ranges."""
    sampling(f"format {fmt.name!r}: defaults", fmt.defaults)


def _one(args: tuple, kwargs: dict, what: str) -> Any:
    if len(args) + len(kwargs) != 1:
        raise TypeError(f"register() takes one {what}")
    return args[0] if args else next(iter(kwargs.values()))


def _as_format(args: tuple, kwargs: dict) -> tuple[str, PromptFormat]:
    fmt = _one(args, kwargs, "PromptFormat")
    if not isinstance(fmt, PromptFormat):
        raise FormatError(f"register_formats: expected a PromptFormat, got {type(fmt).__name__}")
    return fmt.name, fmt


def _as_completion_format(args: tuple, kwargs: dict) -> tuple[str, CompletionFormat]:
    fmt = _one(args, kwargs, "CompletionFormat")
    if not isinstance(fmt, CompletionFormat):
        raise CompletionError(f"register_completion_formats: expected a CompletionFormat, got {type(fmt).__name__}")
    return fmt.name, fmt


def _as_bot(args: tuple, kwargs: dict) -> tuple[str, BotEntry]:
    bot = BotEntry(*args, **kwargs)
    if not isinstance(bot.name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", bot.name):
        raise TypeError(f"bot name {bot.name!r}: use 1-32 lowercase letters, digits, '_', '-'")
    if not callable(bot.factory):
        raise TypeError(f"bot {bot.name!r}: the factory must be callable")
    return bot.name, bot


def _as_preset(args: tuple, kwargs: dict) -> tuple[str, Preset]:
    p = _one(args, kwargs, "Preset or dict")
    preset = p if isinstance(p, Preset) else Preset.from_dict(p)
    return preset.name, preset


def _as_command(args: tuple, kwargs: dict) -> tuple[str, Command]:
    cmd = Command(*args, **kwargs)
    if not isinstance(cmd.name, str) or not re.fullmatch(r"[a-z][a-z0-9-]{0,39}", cmd.name):
        raise TypeError(f"command name {cmd.name!r}: use lowercase letters, digits and '-'")
    if not callable(cmd.configure) or not callable(cmd.run):
        raise TypeError(f"command {cmd.name!r}: configure and run must be callable")
    return cmd.name, cmd


def _as_initial_state(args: tuple, kwargs: dict) -> tuple[str, InitialState]:
    st = InitialState(*args, **kwargs)
    if not all(isinstance(x, str) for x in (st.name, st.path, st.description)):
        raise TypeError("register(name, path, description) takes three strings")
    return st.name, st


def _as_callable(what: str) -> Callable[[tuple, dict], tuple[str, Callable]]:
    def convert(args: tuple, kwargs: dict) -> tuple[str, Callable]:
        name, fn = (list(args) + list(kwargs.values()))[:2] if len(args) + len(kwargs) == 2 else (None, None)
        if not isinstance(name, str) or not callable(fn):
            raise TypeError(f"register(name, {what.replace(' ', '_')}) takes a name and a function")
        return name, fn

    return convert
