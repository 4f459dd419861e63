"""What every chat bot shares, whatever its network: conversations, triggers, commands, rate limits,
reply chunking. A network adapter (IRC here; Matrix, Discord, Telegram the same way) only turns its
events into `Incoming` messages and sends the strings `BotCore.handle` yields.

Each (network, channel, user) is its own daemon session, so a conversation continues where it left off
and never sees another's; `!reset` forgets one. Replies stream from the daemon and leave in a few
messages (a sentence or line boundary once enough text is there), each within the network's size.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ...core.errors import RWKVHubError
from ..client import Client, ServerError

log = logging.getLogger("rwkv_hub.bots")
COMMANDS = ("ask", "reset", "preset", "help")  # what `command_prefix` + NAME does (docs/bots.md)
MAX_TRACKED = 4096  # rate-limit buckets kept; beyond it, the ones that have refilled (forgotten people) go


class BotConfigError(RWKVHubError):
    """A bot's settings are wrong: which key, what was expected."""


@dataclass
class BotSettings:
    """The settings every bot has (`[bots.NAME]` in the config file); networks add their own."""

    format: str = "chat"
    preset: str = "chat"
    command_prefix: str = "!"
    max_tokens: int = 200
    max_reply_chars: int = 1500  # the most one reply may be, over all its messages
    chunk_chars: int = 300  # a message leaves once this much text is there and a sentence or line ends
    user_burst: int = 3  # messages a user may send at once ...
    user_per_minute: float = 6.0  # ... and after that, this many a minute
    channel_burst: int = 8
    channel_per_minute: float = 20.0
    ignore: list[str] = field(default_factory=list)  # nicks never answered (other bots)
    ignore_pattern: str = r"(?i)bot\d*$|^bot"  # names that look like bots are not answered either
    max_concurrent: int = 8  # replies being written at once, over all conversations

    @classmethod
    def from_table(cls, name: str, table: Mapping[str, Any]) -> BotSettings:
        """Settings from a config table, each key checked; unknown keys and wrong types are errors."""
        known = {f.name for f in fields(cls)}
        values = {}
        for key, value in table.items():
            if key == "enabled":
                continue
            if key not in known:
                raise BotConfigError(f"[bots.{name}]: unknown key {key!r}; known: {', '.join(sorted(known))}")
            default = getattr(cls(), key)
            want = type(default)
            if want is list:
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            elif want is bool:
                ok = isinstance(value, bool)
            elif want is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok = isinstance(value, want) and not isinstance(value, bool)
            if not ok:
                raise BotConfigError(f"[bots.{name}]: {key} must be {want.__name__}, not {type(value).__name__}")
            values[key] = float(value) if want is float else value
        settings = cls(**values)
        settings.check(name)
        return settings

    def check(self, name: str) -> None:
        for key in ("max_tokens", "max_reply_chars", "chunk_chars", "user_burst", "channel_burst", "max_concurrent"):
            if getattr(self, key) < 1:
                raise BotConfigError(f"[bots.{name}]: {key} must be at least 1")
        if self.user_per_minute <= 0 or self.channel_per_minute <= 0:
            raise BotConfigError(f"[bots.{name}]: the per-minute rates must be above 0")
        try:
            re.compile(self.ignore_pattern)
        except re.error as e:
            raise BotConfigError(f"[bots.{name}]: ignore_pattern is not a regular expression: {e}") from None


@dataclass(frozen=True)
class Incoming:
    """A message the network delivered. `channel` is None for a direct message; `text` is what the user
    said to the bot, with the mention or the trigger already taken off by the adapter."""

    network: str
    channel: str | None
    user: str
    text: str


class Bucket:
    """A token bucket: `burst` at once, then `per_minute`."""

    def __init__(self, burst: int, per_minute: float, clock: Callable[[], float] = time.monotonic):
        self.burst, self.rate, self.clock = burst, per_minute / 60.0, clock
        self.tokens, self.at = float(burst), clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def full(self) -> bool:
        """Whether the whole burst is back (a new bucket would be the same)."""
        self._refill()
        return self.tokens >= self.burst

    def take(self) -> bool:
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait(self) -> float:
        """Seconds until the next message would be allowed."""
        return max(0.0, (1 - self.tokens) / self.rate)


def session_id(msg: Incoming) -> str:
    """The daemon session of a conversation: readable, within the protocol's 64 safe characters, and
    distinct for distinct (network, channel, user) even when cleaning the names makes them look alike."""
    key = f"{msg.network}\0{msg.channel or ''}\0{msg.user}"
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{msg.network}.{msg.channel or 'dm'}.{msg.user}")[:48]
    return f"{readable}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def chunks(pieces: AsyncIterator[str], size: int, limit: int) -> AsyncIterator[str]:
    """Group streamed text into messages: one leaves once `size` characters are there and a sentence or a
    line has ended (or at twice `size` whatever), so a long answer is a few messages, not hundreds.
    Everything past `limit` characters is dropped, with an ellipsis."""

    async def gen() -> AsyncIterator[str]:
        buf, total = "", 0
        async for piece in pieces:
            buf += piece
            while len(buf) >= size:
                cut = max(buf.rfind(". ", 0, 2 * size), buf.rfind("\n", 0, 2 * size), buf.rfind("? ", 0, 2 * size))
                if cut < size // 2:
                    if len(buf) < 2 * size:
                        break
                    cut = buf.rfind(" ", 0, 2 * size)
                    cut = cut if cut > 0 else 2 * size
                out, buf = buf[: cut + 1].strip(), buf[cut + 1 :]
                total += len(out)
                if total >= limit:
                    yield out[: max(0, len(out) - (total - limit))] + " …"
                    return
                if out:
                    yield out
        rest = buf.strip()
        if rest and total < limit:
            yield rest if total + len(rest) <= limit else rest[: limit - total] + " …"

    return gen()


class BotCore:
    """Commands, rate limits and conversations for one bot on one network."""

    def __init__(self, name: str, settings: BotSettings, client: Client, own_names: Callable[[], set[str]]):
        self.name = name
        self.settings = settings
        self.client = client
        self.own_names = own_names  # the bot's current names on the network (a nick can change)
        self.presets: dict[str, str] = {}  # session -> preset chosen with !preset
        self.known_presets: list[str] | None = None
        self.users: dict[tuple[str, str], Bucket] = {}
        self.channels: dict[str, Bucket] = {}
        self.warned: set[tuple[str, str]] = set()  # (channel, user) told to slow down, until allowed again
        self.locks: dict[str, asyncio.Lock] = {}
        self.slots = asyncio.Semaphore(settings.max_concurrent)
        self.ignore = {n.lower() for n in settings.ignore}
        self.ignore_re = re.compile(settings.ignore_pattern)

    def ignored(self, user: str) -> bool:
        """Never answer itself, listed bots, or names that look like bots (no loops between bots)."""
        low = user.lower()
        return low in {n.lower() for n in self.own_names()} or low in self.ignore or bool(self.ignore_re.search(user))

    async def handle(self, msg: Incoming) -> AsyncIterator[str]:
        """The messages to send back (possibly none) for one incoming message."""
        if self.ignored(msg.user) or not msg.text.strip():
            return
        where = msg.channel or f"dm:{msg.user}"
        if not self._allowed(where, msg.user):
            if (where, msg.user) not in self.warned:
                self.warned.add((where, msg.user))
                wait = max(self.users[(where, msg.user)].wait(), self.channels[where].wait())
                yield f"slow down, please: try again in {max(1, round(wait))} s"
            return
        self.warned.discard((where, msg.user))
        text = msg.text.strip()
        p = self.settings.command_prefix
        if text.startswith(p):
            async for out in self._command(msg, text[len(p) :].strip()):
                yield out
            return
        async for out in self._chat(msg, text):
            yield out

    def is_command(self, text: str) -> bool:
        """Whether `text` is one of this bot's commands (an adapter can leave other bots' commands alone)."""
        p = self.settings.command_prefix
        return text.startswith(p) and text[len(p) :].strip().partition(" ")[0] in COMMANDS

    def _prune(self) -> None:
        """Keep the per-person and per-channel state bounded: a bucket that has refilled holds nothing the
        next message would not get afresh, and an idle conversation's lock can be made again."""
        for table in (self.users, self.channels):
            if len(table) > MAX_TRACKED:
                for key in [k for k, b in table.items() if b.full()]:
                    del table[key]
                # Many people busy at once: the oldest are forgotten down to 3/4 of the bound, so the next
                # scan is a quarter of the bound away instead of at the next message.
                while len(table) > MAX_TRACKED * 3 // 4:
                    del table[next(iter(table))]
        if len(self.locks) > MAX_TRACKED:
            for sid in [sid for sid, lock in self.locks.items() if not lock.locked() and not lock._waiters]:
                del self.locks[sid]
        if len(self.warned) > MAX_TRACKED:
            self.warned = {w for w in self.warned if w in self.users}
        while len(self.presets) > MAX_TRACKED:
            del self.presets[next(iter(self.presets))]

    def _allowed(self, where: str, user: str) -> bool:
        self._prune()
        s = self.settings
        ub = self.users.setdefault((where, user), Bucket(s.user_burst, s.user_per_minute))
        cb = self.channels.setdefault(where, Bucket(s.channel_burst, s.channel_per_minute))
        if not ub.take():
            return False
        if not cb.take():
            ub.tokens += 1  # the channel was full: the user's own allowance is not spent
            return False
        return True

    async def _command(self, msg: Incoming, line: str) -> AsyncIterator[str]:
        name, _, arg = line.partition(" ")
        try:
            async for out in self._run_command(msg, name, arg.strip()):
                yield out
        except ServerError as e:
            log.warning("bot %s: the daemon refused %s: %s", self.name, name, e)
            yield f"sorry, the daemon refused that ({e}); try again later"
        except ConnectionError:
            yield "sorry, the model is not reachable right now; try again later"

    async def _run_command(self, msg: Incoming, name: str, arg: str) -> AsyncIterator[str]:
        sid = session_id(msg)
        p = self.settings.command_prefix
        if name == "reset":
            try:
                await self.client.reset_session(sid)
            except ServerError as e:
                if e.code != "session":  # no session yet: there is nothing to forget
                    raise
            yield "forgotten: we start afresh"
        elif name == "preset":
            presets = await self._presets()
            now = self.presets.get(sid, self.settings.preset)
            if not arg:
                yield f"presets: {', '.join(presets)} (now: {now})"
            elif arg not in presets:
                yield f"no preset {arg!r}; presets: {', '.join(presets)} (now: {now})"
            else:
                self.presets.pop(sid, None)
                self.presets[sid] = arg
                yield f"preset set to {arg}"
        elif name == "help":
            yield (
                f"talk to me by name or in private; {p}reset forgets our conversation, {p}preset NAME changes "
                f"how I answer ({p}preset lists them), {p}ask QUESTION asks without my name"
            )
        elif name == "ask":
            if not arg:
                yield f"ask what? {p}ask QUESTION"
                return
            async for out in self._chat(msg, arg):
                yield out
        else:
            yield f"unknown command {p}{name}; try {p}help"

    async def _presets(self) -> list[str]:
        if self.known_presets is None:
            self.known_presets = list((await self.client.hello()).get("presets", []))
        return self.known_presets

    async def _chat(self, msg: Incoming, text: str) -> AsyncIterator[str]:
        sid = session_id(msg)
        lock = self.locks.setdefault(sid, asyncio.Lock())
        s = self.settings
        async with lock, self.slots:  # one turn at a time per conversation, waited for before a slot
            req = self.client.chat(
                text,
                session=sid,
                format=s.format,
                preset=self.presets.get(sid, s.preset),
                params={"max_tokens": s.max_tokens},
            )
            sent = False
            try:
                async with req:
                    async for out in chunks(req, s.chunk_chars, s.max_reply_chars):
                        sent = True
                        yield out
            except ServerError as e:
                log.warning("bot %s: the daemon refused a turn: %s", self.name, e)
                yield "sorry, I cannot answer that now (the model is busy or refused it); try again later"
                return
            except ConnectionError:
                yield "sorry, the model is not reachable right now; try again later"
                return
            if not sent:
                yield "…"
