"""The IRC bot against a real IRC server (Debian's ngircd, installed by .ci/run) on loopback and a real
daemon: two people in two channels at once, conversations kept apart, !reset, flood limits that spare
the others, the server going down and coming back, `rwkv-hub bot irc`, and bots started by the daemon."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DaemonThread

from rwkv_hub.adapters.bots.core import Incoming, session_id
from rwkv_hub.adapters.bots.irc import IrcBot, IrcSettings, parse_line
from rwkv_hub.adapters.client import Client
from rwkv_hub.hub.config import Config, Limits

TOKEN = "irc-test-token-0123456789"
SHAPE = dict(n_layer=2, n_embd=128, vocab_size=256, head_size=64)
BOT = {
    "nick": "rwkv",
    "channels": ["#one", "#two"],
    "max_tokens": 12,
    "send_interval": 0.02,
    "reconnect_min": 0.2,
    "reconnect_max": 0.5,
    "user_burst": 3,
    "user_per_minute": 6,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class IrcServer:
    """ngircd on a loopback port, in the foreground, stoppable and restartable on the same port."""

    def __init__(self, folder: Path, tls: bool = False):
        exe = shutil.which("ngircd") or (os.path.exists("/usr/sbin/ngircd") and "/usr/sbin/ngircd")
        if not exe:
            if os.environ.get("CI"):
                pytest.fail("ngircd is not installed; .ci/run installs Debian's ngircd")
            pytest.skip("ngircd is not installed (apt-get install ngircd)")
        self.exe, self.port = exe, free_port()
        self.conf = folder / "ngircd.conf"
        text = (
            "[Global]\nName = irc.test\nInfo = rwkv-hub tests\nListen = 127.0.0.1\n"
            f"Ports = {self.port}\nServerUID = {os.getuid() or 65534}\nServerGID = {os.getgid() or 65534}\n"
            "[Limits]\nMaxConnectionsIP = 0\nMaxNickLength = 30\nPingTimeout = 120\n"
            "[Options]\nPAM = no\nIdent = no\nDNS = no\n"
        )
        self.tls_port = None
        if tls:  # a self-signed certificate, made for this server only
            self.tls_port = free_port()
            key, cert = folder / "key.pem", folder / "cert.pem"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
                + ["-keyout", str(key), "-out", str(cert)],
                check=True,
                capture_output=True,
            )
            text += f"[SSL]\nCertFile = {cert}\nKeyFile = {key}\nPorts = {self.tls_port}\n"
        self.conf.write_text(text)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "-n", "-f", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("ngircd did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class Person:
    """A scripted human on IRC."""

    def __init__(self, nick: str):
        self.nick = nick
        self.lines: asyncio.Queue[tuple[str, str, list[str]]] = asyncio.Queue()

    async def connect(self, port: int, channel: str) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.send(f"NICK {self.nick}")
        self.send(f"USER {self.nick} 0 * :{self.nick}")
        self.task = asyncio.create_task(self._read())
        await self.expect(lambda p, c, a: c == "001")
        self.send(f"JOIN {channel}")
        await self.expect(lambda p, c, a: c == "JOIN" and p.startswith(self.nick + "!"))

    def send(self, line: str) -> None:
        self.writer.write(line.encode() + b"\r\n")

    async def _read(self) -> None:
        while raw := await self.reader.readline():
            prefix, command, params = parse_line(raw.decode(errors="replace").rstrip("\r\n"))
            if command == "PING":
                self.send(f"PONG :{params[-1]}")
            self.lines.put_nowait((prefix, command, params))

    async def expect(self, pred, timeout: float = 30.0):
        async def go():
            while True:
                item = await self.lines.get()
                if pred(*item):
                    return item

        return await asyncio.wait_for(go(), timeout)

    async def answer(self, channel: str, timeout: float = 30.0) -> str:
        """The next message the bot sends to this person in `channel` (its text after 'nick: ')."""
        _, _, params = await self.expect(
            lambda p, c, a: (
                c == "PRIVMSG" and p.startswith("rwkv") and a[0] == channel and a[1].startswith(f"{self.nick}: ")
            ),
            timeout,
        )
        return params[1][len(self.nick) + 2 :]

    async def drain(self, seconds: float) -> list[str]:
        """Every message from the bot in the next `seconds`."""
        out, end = [], time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                p, c, a = await asyncio.wait_for(self.lines.get(), left)
            except asyncio.TimeoutError:
                break
            if c == "PRIVMSG" and p.startswith("rwkv"):
                out.append(a[1])
        return out

    def close(self) -> None:
        self.task.cancel()
        self.writer.close()


@pytest.fixture(scope="module")
def daemon(checkpoint_factory, model_factory, tmp_path_factory):
    model = model_factory(checkpoint_factory(**SHAPE))
    server = DaemonThread()
    config = Config(port=0, limits=Limits(max_active=8))
    hub = server.hub(model, tmp_path_factory.mktemp("sessions"), limits=config.limits.engine())
    running = server.start(hub, config, TOKEN)
    yield running
    server.stop(running).result(60)
    server.close()


@pytest.fixture
def irc(tmp_path):
    server = IrcServer(tmp_path)
    server.start()
    yield server
    server.stop()


def ws(daemon) -> str:
    return daemon.url.replace("http", "ws", 1) + "/ws"


def run(coro, timeout: float = 180):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def started_bot(daemon, irc, **extra) -> tuple[IrcBot, asyncio.Task]:
    settings = IrcSettings.from_table("irc", BOT | {"port": irc.port} | extra)
    bot = IrcBot("irc", settings, Client(ws(daemon), token=TOKEN, retries=0))
    task = asyncio.create_task(bot.run())
    await joined(bot, "#one", "#two")
    return bot, task


async def joined(bot: IrcBot, *channels: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not all(c in bot.joined for c in channels):
        if time.monotonic() > end:
            raise AssertionError(f"the bot did not join {channels}")
        await asyncio.sleep(0.05)


async def ask_once(irc, nick: str, channel: str, text: str) -> str:
    """Someone joins `channel`, asks the bot one thing, and leaves with the answer."""
    person = Person(nick)
    await person.connect(irc.port, channel)
    person.send(f"PRIVMSG {channel} :rwkv: {text}")
    try:
        return await person.answer(channel)
    finally:
        person.close()


def conversation(irc, channel: str, nick: str) -> str:
    return session_id(Incoming("127.0.0.1", channel, nick, ""))


def test_two_people_two_channels_reset_flood_and_a_server_restart(daemon, irc):
    async def go():
        bot, task = await started_bot(daemon, irc)
        alice, bob = Person("alice"), Person("bob")
        await asyncio.gather(alice.connect(irc.port, "#one"), bob.connect(irc.port, "#two"))
        # Both talk at once; each is answered in their own channel.
        alice.send("PRIVMSG #one :rwkv: hello, I am alice")
        bob.send("PRIVMSG #two :rwkv, hello, I am bob")
        await asyncio.gather(alice.answer("#one"), bob.answer("#two"))
        alice.send("PRIVMSG #one :!ask what did I say?")
        bob.send("PRIVMSG rwkv :a private word from bob")  # a direct message: its own conversation
        await alice.answer("#one")
        _, _, dm = await bob.expect(lambda p, c, a: c == "PRIVMSG" and p.startswith("rwkv") and a[0] == "bob")
        async with Client(ws(daemon), token=TOKEN) as c:
            a = await c.get_session(conversation(irc, "#one", "alice"))
            b = await c.get_session(conversation(irc, "#two", "bob"))
            d = await c.get_session(session_id(Incoming("127.0.0.1", None, "bob", "")))
            said = lambda s: [m["content"] for m in s["transcript"] if m["role"] == "user"]  # noqa: E731
            before = (said(a), said(b), said(d))
            # !reset forgets alice's conversation only.
            alice.send("PRIVMSG #one :!reset")
            reset_reply = await alice.answer("#one")
            a2 = await c.get_session(conversation(irc, "#one", "alice"))
            b2 = await c.get_session(conversation(irc, "#two", "bob"))
        # mallory floods; bob is still answered while she is held back.
        mallory = Person("mallory")
        await mallory.connect(irc.port, "#one")
        for n in range(8):
            mallory.send(f"PRIVMSG #one :rwkv: flood {n}")
        await asyncio.sleep(0.2)
        bob.send("PRIVMSG #two :rwkv: are you still there?")
        t0 = time.monotonic()
        await bob.answer("#two")
        bob_wait = time.monotonic() - t0
        flood = await mallory.drain(5)
        mallory.close()
        # The server goes away and comes back; the bot reconnects and rejoins.
        irc.stop()
        await asyncio.sleep(0.5)
        assert not bot.connected.is_set()
        alice.close()
        bob.close()
        irc.start()
        await joined(bot, "#one", "#two")
        back = await ask_once(irc, "carol", "#two", "did you come back?")
        task.cancel()
        return before, reset_reply, a2, b2, bob_wait, flood, back, dm

    before, reset_reply, a2, b2, bob_wait, flood, back, dm = run(go())
    alice_said, bob_said, dm_said = before
    assert alice_said == ["hello, I am alice", "what did I say?"]  # her turns, in her session
    assert bob_said == ["hello, I am bob"] and dm_said == ["a private word from bob"]
    assert reset_reply == "forgotten: we start afresh"
    assert a2["turns"] == 0 and a2["transcript"] == [] and b2["turns"] == 1
    answers = [m for m in flood if m.startswith("mallory: ") and "slow down" not in m]
    slowed = [m for m in flood if "slow down" in m]
    assert len(slowed) == 1 and len(answers) == 3, flood  # her burst, then one notice and silence
    assert bob_wait < 15
    assert isinstance(back, str) and dm[1]


def test_a_server_that_goes_silent_is_pinged_then_left_and_the_bot_comes_back(daemon, irc):
    """A frozen server (SIGSTOP: the connection stays open, nothing comes) is what a dead link looks like."""

    async def go():
        bot, task = await started_bot(daemon, irc, ping_interval=0.5)
        # An idle but live server answers our PINGs: the bot stays on through several intervals.
        dropped = False
        for _ in range(40):
            await asyncio.sleep(0.05)
            dropped = dropped or not bot.connected.is_set()
        os.kill(irc.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            while bot.connected.is_set() and time.monotonic() - t0 < 20:
                await asyncio.sleep(0.05)
            gave_up = time.monotonic() - t0
            left = not bot.connected.is_set()
        finally:
            os.kill(irc.proc.pid, signal.SIGCONT)
        await joined(bot, "#one", "#two")
        back = await ask_once(irc, "erin", "#one", "still with us?")
        task.cancel()
        return dropped, left, gave_up, back

    dropped, left, gave_up, back = run(go())
    assert not dropped  # PONGs keep a quiet connection
    assert left and 0.5 <= gave_up < 5, gave_up  # a PING after 0.5 s of silence, given up 0.5 s later
    assert isinstance(back, str)


def test_the_bot_connects_over_tls(daemon, tmp_path):
    irc = IrcServer(tmp_path, tls=True)
    irc.start()

    async def go():
        settings = IrcSettings.from_table("irc", BOT | {"port": irc.tls_port, "tls": True, "tls_verify": False})
        bot = IrcBot("irc", settings, Client(ws(daemon), token=TOKEN, retries=0))
        task = asyncio.create_task(bot.run())
        await joined(bot, "#one")
        gina = Person("gina")
        await gina.connect(irc.port, "#one")  # a person on the plain port, the bot on TLS
        gina.send("PRIVMSG #one :rwkv: is this encrypted?")
        got = await gina.answer("#one")
        gina.close()
        task.cancel()
        return got

    try:
        assert isinstance(run(go()), str)
    finally:
        irc.stop()


def test_the_bot_never_answers_itself_or_other_bots_and_ignores_plain_chatter(daemon, irc):
    async def go():
        bot, task = await started_bot(daemon, irc)
        other, dave = Person("helperbot"), Person("dave")
        await asyncio.gather(other.connect(irc.port, "#one"), dave.connect(irc.port, "#one"))
        other.send("PRIVMSG #one :rwkv: answer me, fellow bot")
        dave.send("PRIVMSG #one :just talking, not to the bot")
        dave.send("PRIVMSG #one :\x01ACTION waves\x01")
        quiet = await dave.drain(2)
        dave.send("PRIVMSG #one :!help")
        help_text = await dave.answer("#one")
        other.close()
        dave.close()
        task.cancel()
        return quiet, help_text

    quiet, help_text = run(go())
    assert quiet == []
    assert "!reset" in help_text and "!preset" in help_text


def test_rwkv_hub_bot_irc_runs_from_the_command_line(daemon, irc, tmp_path):
    conf = tmp_path / "config.toml"
    channels = ", ".join(f'"{c}"' for c in BOT["channels"])
    conf.write_text(f'[bots.irc]\nport = {irc.port}\nnick = "rwkv"\nchannels = [{channels}]\nmax_tokens = 8\n')
    cmd = [sys.executable, "-m", "rwkv_hub", "bot", "irc", "--config", str(conf), "--url", ws(daemon), "--token", TOKEN]
    procs = []

    async def go():
        erin = Person("erin")
        await erin.connect(irc.port, "#one")  # before the bot, so erin sees it join
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        await erin.expect(lambda p, c, a: c == "JOIN" and p.startswith("rwkv!"), 60)
        erin.send("PRIVMSG #one :rwkv: hello from the command line")
        got = await erin.answer("#one", 60)
        erin.close()
        return got

    try:
        assert isinstance(run(go()), str)
    finally:
        for proc in procs:
            proc.terminate()
            out, _ = proc.communicate(timeout=30)
            assert "Traceback" not in out


def test_bad_bot_settings_are_one_clear_error(tmp_path):
    conf = tmp_path / "config.toml"
    conf.write_text('[bots.irc]\nnick = "has space"\n')
    cmd = [sys.executable, "-m", "rwkv_hub", "bot", "irc", "--config", str(conf), "--token", "x"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "[bots.irc]: nick 'has space' is not a valid IRC nickname" in r.stderr
    conf.write_text("[bots.irc]\nmax_tokenz = 3\n")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown key 'max_tokenz'" in r.stderr
    r = subprocess.run([*cmd[:4], "nobot", *cmd[5:]], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no bot named 'nobot'; the plugins offer: irc" in r.stderr


def test_the_daemon_starts_and_stops_enabled_bots(checkpoint_factory, model_factory, irc, tmp_path):
    model = model_factory(checkpoint_factory(**SHAPE))
    server = DaemonThread()
    config = Config(port=0, bots={"irc": BOT | {"port": irc.port, "enabled": True}})
    hub = server.hub(model, tmp_path / "sessions", limits=config.limits.engine())
    running = server.start(hub, config, TOKEN)

    async def go():
        frank = Person("frank")
        await frank.connect(irc.port, "#two")
        await frank.expect(lambda p, c, a: c == "JOIN" and p.startswith("rwkv!") or c == "353" and "rwkv" in a[-1], 60)
        frank.send("PRIVMSG #two :rwkv: are you part of the daemon?")
        got = await frank.answer("#two", 60)
        await asyncio.wrap_future(server.stop(running))
        await frank.expect(lambda p, c, a: c == "QUIT" and p.startswith("rwkv!"), 30)  # gone with the daemon
        frank.close()
        return got

    try:
        assert isinstance(run(go()), str)
    finally:
        server.close()


def test_a_taken_or_too_long_nickname_still_gets_the_bot_in(daemon, irc, tmp_path):
    """A nick in use at the longest length, and a nick over a server's 9-character limit (ngircd's
    default): the bot registers under a variant instead of repeating a refused name forever."""
    (tmp_path / "short").mkdir()
    short = IrcServer(tmp_path / "short")
    short.conf.write_text(short.conf.read_text().replace("MaxNickLength = 30", "MaxNickLength = 9"))
    taken = "r" + "w" * 29  # 30 characters, the most the `irc` server takes

    async def go():
        holder = Person(taken)
        await holder.connect(irc.port, "#one")
        got = []
        for server, nick in ((irc, taken), (short, "rwkv-hub-bot")):
            settings = IrcSettings.from_table("irc", BOT | {"port": server.port, "nick": nick})
            bot = IrcBot("irc", settings, Client(ws(daemon), token=TOKEN, retries=0))
            task = asyncio.create_task(bot.run())
            await joined(bot, "#one", "#two", timeout=20)
            got.append(bot.nick)
            task.cancel()
        holder.close()
        return got

    short.start()
    try:
        in_use, shortened = run(go(), 60)
    finally:
        short.stop()
    assert in_use != taken and len(in_use) <= 30 and in_use.startswith("rww")
    assert len(shortened) <= 9 and shortened.startswith("rwkv-hub")


def test_formatting_other_bots_commands_and_bad_commands(daemon, irc):
    """Colours and bold around the bot's name still address it and never reach the model; another bot's
    `!command` gets no answer; a command used wrongly says what was wrong."""

    async def go():
        bot, task = await started_bot(daemon, irc, user_burst=10, channel_burst=10)
        dave = Person("dave")
        await dave.connect(irc.port, "#one")
        dave.send("PRIVMSG #one :\x02rwkv\x02: \x0304hello in colour\x03")
        await dave.answer("#one")
        dave.send("PRIVMSG #one :!weather paris")
        quiet = await dave.drain(1.5)
        dave.send("PRIVMSG #one :!ask")
        ask = await dave.answer("#one")
        dave.send("PRIVMSG #one :!preset nosuch")
        preset = await dave.answer("#one")
        async with Client(ws(daemon), token=TOKEN) as c:
            said = await c.get_session(conversation(irc, "#one", "dave"))
        dave.close()
        task.cancel()
        return quiet, ask, preset, [m["content"] for m in said["transcript"] if m["role"] == "user"]

    quiet, ask, preset, said = run(go())
    assert said == ["hello in colour"]
    assert quiet == []
    assert ask == "ask what? !ask QUESTION"
    assert preset.startswith("no preset 'nosuch'; presets: ") and "chat" in preset
