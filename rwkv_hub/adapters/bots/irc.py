"""An IRC bot on asyncio (RFC 1459/2812, plain or TLS), built on `BotCore`.

It registers, joins the configured channels, answers when addressed by name (`nick: ...`), by a command
(`!ask ...`, `!reset`, `!preset`, `!help`) or in a private message, and reconnects with backoff when the
server goes away. What the model writes is cleaned before it is sent: control characters and line
breaks never reach the wire, so a reply cannot smuggle in an IRC command, and each line fits the
512-byte limit with the server's prefix added.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from dataclasses import dataclass, field
from typing import Any

from ..client import Client
from .core import BotConfigError, BotCore, BotSettings, Incoming

log = logging.getLogger("rwkv_hub.bots")
LINE_BYTES = 512
PREFIX_ROOM = 100  # what the server adds when it relays our line: ":nick!user@host "
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# mIRC formatting: colour (\x03 with its digits), hex colour (\x04), bold, italics, underline, reverse, ...
_FORMATTING = re.compile(
    r"\x03(\d{1,2}(,\d{1,2})?)?|\x04([0-9a-fA-F]{6}(,[0-9a-fA-F]{6})?)?|[\x02\x0f\x11\x16\x1d\x1e\x1f]"
)
NICK_TRIES = 8  # nicknames tried at registration before giving up until the next reconnection
SHORT_NICK = 9  # the nickname length every server takes (RFC 1459)


@dataclass
class IrcSettings(BotSettings):
    server: str = "127.0.0.1"
    port: int = 6667
    tls: bool = False
    tls_verify: bool = True
    nick: str = "rwkv"
    username: str = "rwkv-hub"
    realname: str = "rwkv-hub bot"
    password: str = ""  # the server password (PASS), if the server wants one
    channels: list[str] = field(default_factory=list)
    network: str = ""  # the name conversations are kept under; default: the server's host name
    send_interval: float = 0.4  # seconds between lines we send (servers drop clients that flood)
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    ping_interval: float = 120.0  # seconds of silence from the server before we PING it; as long again: reconnect

    def check(self, name: str) -> None:
        super().check(name)
        if not 0 < self.port < 65536:
            raise BotConfigError(f"[bots.{name}]: port must be between 1 and 65535")
        if not re.fullmatch(r"[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]{0,29}", self.nick):
            raise BotConfigError(f"[bots.{name}]: nick {self.nick!r} is not a valid IRC nickname")
        for ch in self.channels:
            if not re.fullmatch(r"[#&][^\s,\x07]{1,49}", ch):
                raise BotConfigError(f"[bots.{name}]: channel {ch!r} is not a channel name (#name)")
        if not re.fullmatch(r"[^\s@\x00-\x1f\x7f]{1,30}", self.username):
            raise BotConfigError(f"[bots.{name}]: username {self.username!r} must be 1-30 characters, no spaces or @")
        for key in ("realname", "password"):
            if _CONTROL.search(getattr(self, key)):
                raise BotConfigError(f"[bots.{name}]: {key} must not contain control characters or line breaks")
        if not self.realname.strip():
            raise BotConfigError(f"[bots.{name}]: realname must not be empty")
        if self.reconnect_min <= 0 or self.reconnect_max < self.reconnect_min:
            raise BotConfigError(f"[bots.{name}]: reconnect_min must be above 0 and at most reconnect_max")
        if not 0 < self.ping_interval <= 3600:
            raise BotConfigError(f"[bots.{name}]: ping_interval must be above 0 and at most 3600 seconds")


def parse_line(line: str) -> tuple[str, str, list[str]]:
    """(prefix, command, params) of one IRC line; the trailing parameter is the last param."""
    prefix = ""
    if line.startswith(":"):
        prefix, _, line = line[1:].partition(" ")
    head, sep, trailing = line.partition(" :")
    parts = head.split()
    command, params = (parts[0].upper() if parts else ""), parts[1:]
    if sep:
        params.append(trailing)
    return prefix, command, params


def strip_formatting(text: str) -> str:
    """`text` without IRC colours and styles, so what people write in colour still reaches the model as text."""
    return _FORMATTING.sub("", text)


def clean(text: str) -> list[str]:
    """The lines a reply becomes on IRC: no formatting or control characters, no empty lines."""
    return [s for s in (_CONTROL.sub(" ", strip_formatting(line)).strip() for line in text.split("\n")) if s]


def split_bytes(text: str, limit: int) -> list[str]:
    """`text` in pieces of at most `limit` UTF-8 bytes, at spaces where possible, never inside a character."""
    out = []
    while len(text.encode()) > limit:
        cut = len(text.encode()[:limit].decode(errors="ignore"))
        space = text.rfind(" ", 0, cut)
        cut = space if space > cut // 2 else cut
        out.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        out.append(text)
    return out


class IrcBot:
    """One connection to one IRC server, answering through `BotCore`. `run()` until cancelled."""

    def __init__(self, name: str, settings: IrcSettings, client: Client):
        self.name = name
        self.settings = settings
        self.nick = settings.nick
        self.network = settings.network or settings.server
        self.core = BotCore(name, settings, client, lambda: {self.nick, self.settings.nick})
        self.connected = asyncio.Event()  # set while registered with the server
        self.joined: set[str] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._out: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)
        self._tasks: set[asyncio.Task] = set()
        self._nick_tries = 0
        self._short_nick = False  # the server refused a nickname: keep to the length every server takes

    async def run(self) -> None:
        """Connect, serve, and reconnect with exponential backoff until cancelled."""
        delay = self.settings.reconnect_min
        while True:
            try:
                await self._session()
                delay = self.settings.reconnect_min  # a session that ended after registering: retry soon
            # ValueError: a line longer than the reader's limit (64 KiB), from a broken or hostile server
            except (OSError, asyncio.IncompleteReadError, ConnectionError, ValueError) as e:
                log.warning("bot %s: %s:%s: %s", self.name, self.settings.server, self.settings.port, e)
            finally:
                self.connected.clear()
                self.joined.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max)

    async def _session(self) -> None:
        s = self.settings
        ctx = None
        if s.tls:
            ctx = ssl.create_default_context()
            if not s.tls_verify:
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        reader, writer = await asyncio.wait_for(asyncio.open_connection(s.server, s.port, ssl=ctx), 30)
        self._writer = writer
        sender = asyncio.create_task(self._send_loop(writer))
        try:
            self.nick, self._nick_tries = s.nick, 0
            if s.password:
                self._raw(f"PASS {s.password}")
            self._raw(f"NICK {self.nick}")
            self._raw(f"USER {s.username} 0 * :{s.realname}")
            while True:
                raw = await self._read_line(reader)
                if not raw:
                    raise ConnectionError("the server closed the connection")
                self._on_line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        finally:
            sender.cancel()
            for t in list(self._tasks):
                t.cancel()
            writer.close()
            self._writer = None
            while not self._out.empty():
                self._out.get_nowait()

    async def _read_line(self, reader: asyncio.StreamReader) -> bytes:
        """The next line from the server. A link that died without a close (a sleeping laptop, a dropped
        route) sends nothing, so after `ping_interval` of silence we PING, and if nothing comes back in as
        long again we give the connection up: `run` reconnects."""
        wait = self.settings.ping_interval
        try:
            return await asyncio.wait_for(reader.readline(), wait)
        except asyncio.TimeoutError:
            self._raw("PING :rwkv-hub")
        try:
            return await asyncio.wait_for(reader.readline(), wait)
        except asyncio.TimeoutError:
            raise ConnectionError(f"the server sent nothing for {2 * wait:g} s, even to a PING") from None

    def _raw(self, line: str) -> None:
        """Queue a protocol line (never text from users or the model: `say` cleans that)."""
        if self._out.full():
            log.warning("bot %s: the send queue is full; a line was dropped", self.name)
            return
        self._out.put_nowait(line)

    async def _send_loop(self, writer: asyncio.StreamWriter) -> None:
        """Send queued lines, one per `send_interval`, so the server does not drop us for flooding."""
        while True:
            line = await self._out.get()
            writer.write(line.encode("utf-8", errors="replace")[: LINE_BYTES - 2] + b"\r\n")
            await writer.drain()
            await asyncio.sleep(self.settings.send_interval)

    def say(self, target: str, text: str, to: str | None = None) -> None:
        """Send `text` to a channel or nick, cleaned and split; `to` addresses a user in a channel."""
        head = f"PRIVMSG {target} :"
        room = LINE_BYTES - 2 - PREFIX_ROOM - len(head.encode())
        for i, line in enumerate(clean(text)):
            line = f"{to}: {line}" if to and i == 0 else line
            for piece in split_bytes(line, room):
                self._raw(head + piece)

    def _on_line(self, line: str) -> None:
        prefix, command, params = parse_line(line)
        if command == "PING":
            self._raw(f"PONG :{params[-1] if params else ''}")
        elif command == "001":  # registered: our nick is the first parameter
            self.nick = params[0] if params else self.nick
            self.connected.set()
            for ch in self.settings.channels:
                self._raw(f"JOIN {ch}")
        elif command in ("433", "432", "437") and not self.connected.is_set():  # in use, refused, held
            self._another_nick(command, params[-1] if params else "")
        elif command == "JOIN" and prefix.split("!")[0] == self.nick and params:
            self.joined.add(params[0].lower())
        elif command == "NICK" and prefix.split("!")[0] == self.nick and params:
            self.nick = params[-1]
        elif command == "PRIVMSG" and len(params) == 2:
            self._on_privmsg(prefix.split("!")[0], params[0], params[1])

    def _another_nick(self, code: str, why: str) -> None:
        """Register under another nickname: the configured one with `_` or a number, shortened to 9 once
        the server refused one (many servers take no more); after `NICK_TRIES`, reconnect later."""
        self._nick_tries += 1
        if self._nick_tries > NICK_TRIES:
            raise ConnectionError(
                f"the server took none of the nicknames tried ({self.settings.nick!r} and variants): {why}; "
                f"set another `nick` in [bots.{self.name}]"
            )
        self._short_nick = self._short_nick or code == "432"
        limit = SHORT_NICK if self._short_nick else 30
        base = self.settings.nick
        if code == "432" and len(base) > limit and self.nick == base:
            suffix = ""
        else:
            suffix = "_" if self._nick_tries == 1 else str(self._nick_tries)
        new = base[: limit - len(suffix)] + suffix
        log.warning("bot %s: nickname %r not taken (%s %s); trying %r", self.name, self.nick, code, why, new)
        self.nick = new
        self._raw(f"NICK {self.nick}")

    def _on_privmsg(self, user: str, target: str, text: str) -> None:
        if text.startswith("\x01"):  # CTCP (ACTION, VERSION, ...): not for the model
            return
        text = strip_formatting(text)
        direct = target.lower() == self.nick.lower()
        if direct:
            said = text
        else:
            m = re.match(rf"\s*{re.escape(self.nick)}\s*[:,]\s*(.*)$", text, re.I | re.S)
            if m:
                said = m.group(1)
            elif self.core.is_command(text):  # another bot's `!command` in the channel is not for us
                said = text
            else:
                return
        msg = Incoming(self.network, None if direct else target, user, said)
        reply_to = user if direct else target
        task = asyncio.create_task(self._answer(msg, reply_to, None if direct else user))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Incoming, target: str, to: str | None) -> None:
        try:
            first = True
            async for out in self.core.handle(msg):
                self.say(target, out, to if first else None)
                first = False
        except asyncio.CancelledError:
            raise
        except Exception:  # one conversation's failure must not take the bot down
            log.exception("bot %s: answering %s failed", self.name, msg.user)


def make_irc_bot(name: str, table: dict[str, Any], client: Client) -> IrcBot:
    """The factory the built-in plugin registers as the `irc` bot."""
    return IrcBot(name, IrcSettings.from_table(name, table), client)
