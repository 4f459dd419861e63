"""The parts every bot shares, and the IRC bot's line handling, without a network."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from rwkv_hub.adapters.bots.core import BotConfigError, BotSettings, Bucket, Incoming, chunks, session_id
from rwkv_hub.adapters.bots.irc import LINE_BYTES, IrcBot, IrcSettings, clean, parse_line, split_bytes
from rwkv_hub.adapters.client import Client


async def _pieces(text: str, size: int = 7):
    for i in range(0, len(text), size):
        yield text[i : i + size]


def collect(text: str, size: int, limit: int) -> list[str]:
    async def go():
        return [m async for m in chunks(_pieces(text), size, limit)]

    return asyncio.run(go())


def test_long_answers_leave_in_a_few_messages_at_sentence_ends():
    text = " ".join(f"Sentence number {i} is here." for i in range(40))  # about 1,100 characters
    out = collect(text, 300, 5000)
    assert 3 <= len(out) <= 5 and " ".join(out) == text
    assert all(m.endswith(".") for m in out)
    plain = "no sentence end " * 60
    first = collect(plain, 100, 5000)[0]
    assert plain.startswith(first) and plain[len(first)] == " " and len(first) <= 200  # at a space at worst
    capped = collect(text, 300, 500)
    assert sum(len(m) for m in capped) <= 502 and capped[-1].endswith("…")
    assert collect("short", 300, 5000) == ["short"]


def test_buckets_allow_a_burst_then_a_rate():
    now = [0.0]
    b = Bucket(3, 6.0, clock=lambda: now[0])
    assert [b.take() for _ in range(4)] == [True, True, True, False]
    assert b.wait() == pytest.approx(10.0)
    now[0] = 10.0
    assert b.take() and not b.take()


def test_session_ids_are_safe_and_distinct():
    a = session_id(Incoming("irc.libera.chat", "#python", "al[ice]", ""))
    b = session_id(Incoming("irc.libera.chat", "#python", "al_ice_", ""))
    dm = session_id(Incoming("irc.libera.chat", None, "al[ice]", ""))
    assert len({a, b, dm}) == 3  # names that clean alike stay apart
    for sid in (a, b, dm, session_id(Incoming("n" * 300, "#c" * 100, "u" * 100, ""))):
        assert len(sid) <= 64 and all(ch.isalnum() or ch in "_.-" for ch in sid)


def test_irc_lines_parse():
    assert parse_line(":alice!a@h PRIVMSG #one :rwkv: hi there") == ("alice!a@h", "PRIVMSG", ["#one", "rwkv: hi there"])
    assert parse_line("PING :irc.test") == ("", "PING", ["irc.test"])
    assert parse_line(":irc.test 001 rwkv :Welcome") == ("irc.test", "001", ["rwkv", "Welcome"])
    assert parse_line(":irc.test MODE rwkv +i") == ("irc.test", "MODE", ["rwkv", "+i"])


def test_model_text_cannot_inject_irc_commands_and_lines_fit():
    bot = IrcBot("irc", IrcSettings(), Client("ws://127.0.0.1:9/ws", token="x"))
    bot.say("#one", "hello\r\nQUIT :bye\x00\x07 and " + "é" * 400, to="alice")
    lines = []
    while not bot._out.empty():
        lines.append(bot._out.get_nowait())
    assert lines[0] == "PRIVMSG #one :alice: hello"
    assert lines[1].startswith("PRIVMSG #one :QUIT :bye")  # the model's "command" is only text to a channel
    for line in lines:
        assert all(ord(ch) >= 32 for ch in line) and len(line.encode()) <= LINE_BYTES - 2
    assert "".join(line.split(" :", 1)[1] for line in lines[1:]).replace(" ", "") == ("QUIT:bye" + "and" + "é" * 400)
    assert clean("a\n\n \t\nb") == ["a", "b"]
    assert split_bytes("ab" * 10, 5) == ["ababa", "babab", "ababa", "babab"]


def test_settings_are_checked():
    assert BotSettings.from_table("x", {"user_per_minute": 3}).user_per_minute == 3.0
    with pytest.raises(BotConfigError, match=r"\[bots.x\]: unknown key 'colour'"):
        BotSettings.from_table("x", {"colour": "blue"})
    with pytest.raises(BotConfigError, match="max_tokens must be int, not str"):
        BotSettings.from_table("x", {"max_tokens": "ten"})
    with pytest.raises(BotConfigError, match="max_tokens must be at least 1"):
        BotSettings.from_table("x", {"max_tokens": 0})
    with pytest.raises(BotConfigError, match="tls must be bool"):
        IrcSettings.from_table("irc", {"tls": "yes"})
    with pytest.raises(BotConfigError, match="'one' is not a channel name"):
        IrcSettings.from_table("irc", {"channels": ["one"]})
    with pytest.raises(BotConfigError, match="ping_interval must be above 0"):
        IrcSettings.from_table("irc", {"ping_interval": 0})
    assert IrcSettings.from_table("irc", {"tls": True, "port": 6697, "enabled": True}).tls


def test_a_reply_cut_at_the_limit_says_so_even_in_its_last_message():
    out = collect("word " * 100, 300, 50)  # never long enough for a message of 300: all in the last one
    assert len(out) == 1 and out[0].endswith(" …") and len(out[0]) <= 52


def test_irc_formatting_is_taken_off_and_settings_cannot_break_registration():
    from rwkv_hub.adapters.bots.irc import strip_formatting

    assert strip_formatting("\x02rwkv\x02: \x0304,12red\x03 \x1ditalic\x1d\x0f") == "rwkv: red italic"
    assert clean("\x0304colour\x03 stays text") == ["colour stays text"]
    with pytest.raises(BotConfigError, match="realname must not contain control characters"):
        IrcSettings.from_table("irc", {"realname": "bot\r\nQUIT"})
    with pytest.raises(BotConfigError, match="username 'a b' must be"):
        IrcSettings.from_table("irc", {"username": "a b"})


def test_the_state_kept_per_person_is_bounded(monkeypatch):
    """A stream of new names (nick changes, a join flood) must not grow the bot's memory without end."""
    import rwkv_hub.adapters.bots.core as core

    monkeypatch.setattr(core, "MAX_TRACKED", 50)
    settings = BotSettings.from_table("x", {"user_per_minute": 1e9, "channel_per_minute": 1e9})
    bot = core.BotCore("x", settings, Client("ws://127.0.0.1:9/ws", token="x"), own_names=lambda: {"rwkv"})
    slow = core.BotCore("x", BotSettings(), Client("ws://127.0.0.1:9/ws", token="x"), own_names=lambda: {"rwkv"})

    sizes = []

    async def go():
        for n in range(500):
            for b in (bot, slow):
                got = [m async for m in b.handle(Incoming("net", None, f"user{n}", "!help"))]
                assert got and "reset" in got[0]
                got = [m async for m in b.handle(Incoming("net", "#c", f"user{n}", "!help"))]
            sizes.append(len(slow.users))

    asyncio.run(go())
    for b in (bot, slow):
        assert len(b.users) <= 51 and len(b.channels) <= 51 and len(b.warned) <= 51
    # Everyone in `slow` is still busy (nobody's bucket refilled), so pruning forgets the oldest; it leaves
    # room for a quarter of the bound, so it scans every ~13 new names (two a round here), not at each one.
    pruned = [i for i in range(1, len(sizes)) if sizes[i] < sizes[i - 1]]
    assert min(sizes[100:]) <= 39 and all(b - a >= 6 for a, b in itertools.pairwise(pruned)), pruned


def test_commands_say_what_was_wrong():
    bot = IrcBot("irc", IrcSettings(), Client("ws://127.0.0.1:9/ws", token="x"))

    async def ask(text: str) -> list[str]:
        return [m async for m in bot.core.handle(Incoming("net", "#c", "dave", text))]

    assert asyncio.run(ask("!ask")) == ["ask what? !ask QUESTION"]
    assert bot.core.is_command("!reset") and bot.core.is_command("!ask why") and not bot.core.is_command("!weather")


def test_commands_answer_when_the_daemon_is_unreachable():
    """!reset and !preset need the daemon: without it, the person is told, not left without an answer."""
    bot = IrcBot("irc", IrcSettings(), Client("ws://127.0.0.1:9/ws", token="x", retries=0))

    async def ask(text: str) -> list[str]:
        return [m async for m in bot.core.handle(Incoming("net", None, text, text))]  # one person each

    for command in ("!reset", "!preset", "!preset chat", "!ask hello?", "hello?"):
        assert asyncio.run(ask(command)) == ["sorry, the model is not reachable right now; try again later"], command
