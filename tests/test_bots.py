"""The parts every bot shares, and the IRC bot's line handling, without a network."""

from __future__ import annotations

import asyncio

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
    assert IrcSettings.from_table("irc", {"tls": True, "port": 6697, "enabled": True}).tls
