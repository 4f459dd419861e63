"""Music conversion: ABC and MIDI event text to .mid and back, checked against hand-worked bars, against
abc2midi where it is installed, and with malformed input that must be repaired or refused cleanly."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import mido
import pytest

from rwkv_hub.core.errors import RWKVHubError
from rwkv_hub.music import tools
from rwkv_hub.music.abc import abc_to_midi, parse_abc, repair_abc, validate_abc
from rwkv_hub.music.midi_text import VocabConfig, midi_to_text, text_to_midi, text_to_tune, validate_midi_text
from rwkv_hub.music.notes import MusicError, Note, Tune

TUNES = Path(__file__).parent / "data" / "tunes"
TUNE_FILES = sorted(TUNES.glob("*.abc"))


def need(tool: str) -> None:
    """Skip when a tool is missing, except in CI (CI=true), which installs them: there it is a failure."""
    found = tools.find_soundfont() is not None if tool == "soundfont" else shutil.which(tool) is not None
    if found:
        return
    package = tools.PACKAGES.get(tool, "fluid-soundfont-gm")
    if os.environ.get("CI") == "true":
        pytest.fail(f"{tool} is missing, but CI installs it (apt-get install {package})")
    pytest.skip(f"{tool} is not installed (apt-get install {package})")


def tune(name: str) -> Tune:
    return parse_abc((TUNES / name).read_text(), repair=False)


def window(t: Tune, start: int, end: int) -> list[tuple[int, int, int]]:
    """(pitch, start, duration) of the notes that start in [start, end), in ticks (480 per quarter note)."""
    return [(n.pitch, n.start, n.duration) for n in t.notes if start <= n.start < end]


# -- ABC: hand-checked bars -------------------------------------------------------------------------------


def test_speed_the_plough_bars_key_and_repeat() -> None:
    t = tune("speed_the_plough.abc")  # K:G, L:1/8 (240 ticks), 4/4 bars of 1920 ticks, |: A :| |: B :|
    assert (t.key, t.meter, t.tempo, t.title) == ("G", (4, 4), 500_000, "Speed the Plough")
    bar1 = [(67, 0, 240), (69, 240, 240), (71, 480, 240), (67, 720, 240)]  # G A B G
    bar1 += [(66, 960, 240), (67, 1200, 240), (69, 1440, 240), (66, 1680, 240)]  # F# G A F# (F sharp in G)
    assert window(t, 0, 1920) == bar1
    bar2 = [(67, 1920, 240), (69, 2160, 240), (71, 2400, 240), (72, 2640, 240), (74, 2880, 480), (71, 3360, 480)]
    assert window(t, 1920, 3840) == bar2
    assert window(t, 8 * 1920, 9 * 1920) == [(p, s + 8 * 1920, d) for p, s, d in bar1]  # the repeat
    b_part = [(79, 30720, 480), (79, 31200, 240), (78, 31440, 240), (79, 31680, 480), (74, 32160, 480)]
    assert window(t, 16 * 1920, 17 * 1920) == b_part  # g2 gf g2 d2, after the A part twice
    assert max(n.end for n in t.notes) == 32 * 1920 and len(t.notes) == 180


def test_the_kesh_endings_in_six_eight() -> None:
    t = tune("the_kesh.abc")  # 6/8, bars of 1440 ticks; |1 AGF G3 :|2 AGF GBd ||
    assert (t.key, t.meter, t.tempo) == ("G", (6, 8), 344_828)  # Q:3/8=116 is 174 quarter notes a minute
    assert window(t, 0, 1440) == [(67, 0, 240), (69, 240, 240), (67, 480, 240), (67, 720, 240), (69, 960, 240)] + [
        (71, 1200, 240)
    ]
    first_ending = [(69, 10080, 240), (67, 10320, 240), (66, 10560, 240), (67, 10800, 720)]
    assert window(t, 7 * 1440, 8 * 1440) == first_ending
    second = 11520 + 7 * 1440  # the second pass skips the first ending
    second_ending = [(69, second, 240), (67, second + 240, 240), (66, second + 480, 240)]
    second_ending += [(67, second + 720, 240), (71, second + 960, 240), (74, second + 1200, 240)]
    assert window(t, second, second + 1440) == second_ending
    assert window(t, second + 1440, second + 2880)[:3] == [(79, 23040, 480), (79, 23520, 240), (79, 23760, 240)]


def test_drowsy_maggie_triplets_in_e_dorian() -> None:
    t = tune("drowsy_maggie.abc")  # M:C| (2/2), K:Edor (F# and C#), (3Bcd takes the time of two eighths
    assert (t.key, t.meter, t.tempo) == ("D", (2, 2), 300_000)  # E dorian is written with D major's signature
    bar1 = [(64, 0, 480), (71, 480, 240), (64, 720, 240), (74, 960, 240), (64, 1200, 240), (71, 1440, 240)]
    assert window(t, 0, 1920) == bar1 + [(64, 1680, 240)]
    bar4 = [(71, 5760, 160), (73, 5920, 160), (74, 6080, 160), (69, 6240, 240), (66, 6480, 240)]
    bar4 += [(62, 6720, 240), (66, 6960, 240), (69, 7200, 240), (66, 7440, 240)]
    assert window(t, 5760, 7680) == bar4


def test_scarborough_fair_accidentals_carry_to_the_bar_line_and_a_tied_chord() -> None:
    t = tune("scarborough_fair.abc")  # 3/4, K:Ador (F#), bars of 1440 ticks
    assert (t.key, t.meter, t.tempo) == ("G", (3, 4), 600_000)
    assert window(t, 0, 1440) == [(69, 0, 960), (69, 960, 480)]
    assert window(t, 2880, 4320) == [(71, 2880, 720), (72, 3600, 240), (71, 3840, 480)]
    assert window(t, 10080, 11520) == [(77, 10080, 480), (74, 10560, 480), (77, 11040, 480)]  # =f2 d2 f2
    assert window(t, 11520, 12960) == [(78, 11520, 480), (76, 12000, 480), (74, 12480, 480)]  # F# again
    assert window(t, 12960, 20000) == [(69, 12960, 1920), (72, 12960, 1920)]  # [A6c6]-|[A2c2]


def test_twinkle_flat_key_broken_rhythm_and_a_final_chord() -> None:
    t = tune("twinkle.abc")  # K:F (B flat), L:1/4 (480 ticks), |: four bars :| then eight
    assert (t.key, t.meter, t.tempo) == ("F", (4, 4), 666_667)
    bar1 = [(65, 0, 480), (65, 480, 480), (72, 960, 480), (72, 1440, 480)]
    assert window(t, 0, 1920) == bar1
    assert window(t, 3840, 5760) == [(70, 3840, 480), (70, 4320, 480), (69, 4800, 480), (69, 5280, 480)]
    assert window(t, 7680, 9600) == [(p, s + 7680, d) for p, s, d in bar1]
    last = 15 * 1920  # G>G [F,A,CF]2
    assert window(t, last, last + 1920) == [(67, last, 720), (67, last + 720, 240)] + [
        (p, last + 960, 960) for p in (53, 57, 60, 65)
    ]


def test_si_bheag_grace_notes_inline_length_and_key_changes() -> None:
    t = tune("si_bheag_si_mhor.abc")  # 3/4, L:1/4, K:D; then [L:1/8]; then [K:G]
    assert (t.key, t.meter, t.tempo) == ("D", (3, 4), 625_000)
    assert window(t, 0, 1440) == [(74, 0, 720), (76, 720, 240), (74, 960, 480)]  # !mf!d>e d
    assert window(t, 1440, 2880) == [(71, 1440, 960), (69, 2400, 480)]  # {c} is a grace note: no time
    assert window(t, 4320, 5760) == [(66, 4320, 720), (64, 5040, 240), (62, 5280, 480)]  # F3/2E/ D
    assert window(t, 5760, 7200) == [(74, 5760, 480), (76, 6240, 480), (78, 6720, 480)]  # [L:1/8]d2 e2 f2
    assert window(t, 11520, 12960) == [(71, 11520, 480), (72, 12000, 480), (74, 12480, 480)]  # [K:G]: C natural
    assert window(t, 14400, 15840) == [(69, 14400, 480), (68, 14880, 480), (69, 15360, 480)]


def test_the_midi_file_carries_the_notes_and_key() -> None:
    text = (TUNES / "the_kesh.abc").read_text()
    data = abc_to_midi(text)
    mid = mido.MidiFile(file=io.BytesIO(data))
    metas = {m.type: m for m in mid.tracks[0] if m.is_meta}
    assert metas["key_signature"].key == "G" and metas["set_tempo"].tempo == 344_828
    assert (metas["time_signature"].numerator, metas["time_signature"].denominator) == (6, 8)
    assert Tune.from_midi(data).notes == parse_abc(text).notes


@pytest.mark.parametrize(
    "key, name",
    [("C", "C"), ("Am", "Am"), ("Ador", "G"), ("Dmix", "G"), ("Bb", "Bb"), ("F#m", "F#m"), ("Ebmaj", "Eb")]
    + [("G minor", "Gm"), ("Cb", "Cb"), ("Elyd", "B"), ("Bloc", "C"), ("none", "C"), ("D clef=bass", "D")],
)
def test_key_names(key: str, name: str) -> None:
    assert parse_abc(f"X:1\nK:{key}\nC|\n", repair=False).key == name


def test_explicit_key_accidentals_and_octaves() -> None:
    t = parse_abc("X:1\nL:1/4\nK:D exp ^f\nC c F, f'' =F ^^G __B|\n", repair=False)
    assert [n.pitch for n in t.notes] == [60, 72, 54, 102, 65, 69, 69]


# -- ABC: our converter agrees with abc2midi -------------------------------------------------------------


@pytest.mark.parametrize("path", TUNE_FILES, ids=[p.stem for p in TUNE_FILES])
def test_abc2midi_agrees_on_pitches_and_onsets(path: Path, tmp_path: Path) -> None:
    need("abc2midi")
    text = path.read_text()
    # abc2midi staggers chord notes by default; chordattack 0 sounds them together as we do.
    out = tools.run_abc2midi(text.replace("\nK:", "\n%%MIDI chordattack 0\nK:", 1), tmp_path / "ref.mid", ["-NGRA"])
    reference = Tune.from_midi(out.read_bytes())
    theirs = sorted(
        (round(n.start * 480 / reference.ticks_per_beat), n.pitch) for n in reference.notes if n.channel == 0
    )
    ours = [(n.start, n.pitch) for n in parse_abc(text).notes]
    assert len(theirs) == len(ours)
    assert [p for _, p in theirs] == [p for _, p in ours]
    assert max(abs(a[0] - b[0]) for a, b in zip(theirs, ours, strict=True)) <= 2  # abc2midi starts at tick 1
    assert reference.key == parse_abc(text).key


# -- ABC: malformed notation --------------------------------------------------------------------------------

MALFORMED = {
    "unclosed chord": ("X:1\nL:1/4\nK:C\n[CEG A|c4|\n", "line 4, column 1: unclosed chord", "[CEG A]|"),
    "unclosed bar": ("X:1\nM:4/4\nL:1/8\nK:G\nGABc d2", "line 5, column 8: the last bar is not closed", "d2|]"),
    "garbage": ("X:1\nL:1/4\nK:C\nC~D E@F|\n", "line 4, column 6: unexpected character '@'", "C~D EF|"),
    "sharp sign": ("X:1\nL:1/4\nK:C\nC#2 D|\n", "line 4, column 1: 'C#' is not ABC", "^C2 D|"),
    "missing K": ("X:1\nT:No key\nCDEF|\n", "line 3, column 1: no K: (key) field", "M:4/4\nL:1/8\nK:C\nCDEF|"),
    "no header": ("CDEF GABc|", "line 1, column 1: no K: (key) field", "X:1\nM:4/4\nL:1/8\nK:C\nCDEF GABc|\n"),
    "unknown key": ("X:1\nK:Qx\nC|\n", "line 2, column 3: unknown key K:'Qx'", "K:C\n"),
    "unclosed quote": ('X:1\nK:C\n"Am CDE|\n', "line 3, column 1: unclosed chord symbol", '"Am" CDE|'),
    "unclosed field": ("X:1\nK:C\nCD [K:G EF|\n", "line 3, column 4: unclosed inline field", "[K:G EF|]"),
    "stray tie and rhythm": ("X:1\nK:C\n|-C >D|\n", "line 3, column 2: tie '-' after no note", "|C >D|"),
    "zero length": ("X:1\nK:C\nC0 D|\n", "line 3, column 1: note 'C0' is of zero length", " D|"),
    "out of range": ("X:1\nK:C\nc'''''' D|\n", "line 3, column 1: note \"c''''''\" is outside MIDI's range", " D|"),
    "empty chord": ("X:1\nK:C\n[] D|\n", "line 3, column 1: empty chord", " D|"),
    "bad meter": ("X:1\nM:x/y\nK:C\nD|\n", "line 2, column 3: unreadable meter", "M:4/4"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_notation_is_repaired_or_reported_with_its_place(case: str) -> None:
    text, problem, repaired_part = MALFORMED[case]
    assert any(p.startswith(problem) for p in validate_abc(text)), validate_abc(text)
    with pytest.raises(MusicError, match=problem.split(":")[0]):
        parse_abc(text, repair=False)
    repaired = repair_abc(text)
    assert repaired_part in repaired
    assert validate_abc(repaired) == []
    # The lenient reader reads exactly what the repair writes.
    assert parse_abc(text).notes == parse_abc(repaired, repair=False).notes


def test_the_unclosed_chord_is_closed_where_the_bar_begins() -> None:
    t = parse_abc(MALFORMED["unclosed chord"][0])
    assert window(t, 0, 480) == [(60, 0, 480), (64, 0, 480), (67, 0, 480), (69, 0, 480)]
    assert window(t, 480, 5000) == [(72, 480, 1920)]


@pytest.mark.parametrize("text", ["", "X:1\nT:empty\nK:C\n", "X:1\nK:C\nz4 | x2 |]\n", "%just a comment\n"])
def test_a_tune_without_notes_is_refused(text: str) -> None:
    with pytest.raises(MusicError, match="no notes"):
        abc_to_midi(text)


@pytest.mark.parametrize("body", ["Z999999999 C|", "C999999999 D|"])
def test_a_tune_too_long_for_a_midi_file_is_refused(body: str) -> None:
    with pytest.raises(MusicError, match="longer than a MIDI file can hold"):
        abc_to_midi(f"X:1\nK:C\n{body}\n")
    with pytest.raises(MusicError, match="longer than a MIDI file can hold"):
        text_to_midi("pi:3c:5 t9999999999 pi:3c:0")


def test_not_text_is_refused() -> None:
    with pytest.raises(MusicError, match="must be text"):
        abc_to_midi(b"X:1\nK:C\nC|")  # type: ignore[arg-type]
    assert issubclass(MusicError, RWKVHubError)


def _mutations(rng: random.Random, base: str) -> str:
    chars = list(base)
    for _ in range(rng.randint(1, 12)):
        pos = rng.randrange(len(chars) + 1)
        op = rng.random()
        if op < 0.4:
            chars.insert(pos, rng.choice("[]|:()-<>^_=,'/0123456789\"!{}&#@zZxK: \n%\\éABCabc"))
        elif op < 0.8 and chars:
            del chars[min(pos, len(chars) - 1)]
        else:
            chars[pos:pos] = chars[rng.randrange(len(chars)) :][:5]
    return "".join(chars)


def test_random_damage_never_raises_anything_but_music_error() -> None:
    rng = random.Random(1234)
    texts = [p.read_text() for p in TUNE_FILES]
    for trial in range(400):
        text = _mutations(rng, rng.choice(texts)) if trial % 4 else "".join(rng.choices("ABCabc|[]:^_=2/ \n", k=40))
        problems = validate_abc(text)
        repaired = repair_abc(text)
        left = validate_abc(repaired)
        assert all("no notes" in p for p in left), (text, left)
        try:
            data = abc_to_midi(text)
        except MusicError:
            assert any("no notes" in p for p in problems), text
        else:
            assert data.startswith(b"MThd")


# -- MIDI event text -----------------------------------------------------------------------------------------


def test_default_vocabulary_matches_the_released_tokenizer() -> None:
    cfg = VocabConfig.default()
    # Short names as in ChatRWKV's music/tokenizer-midi.json (pi = piano, p = percussion, tr = trumpet).
    assert cfg.short_names == ("p", "d", "t", "m", "b", "g", "v", "tr", "pi", "s", "f", "l", "pa")
    tokens = cfg.tokens()
    assert len(tokens) == 20096 and tokens[:4] == ["<pad>", "<start>", "<end>", "t1"] and tokens[127] == "t125"
    assert tokens.index("p:0:0") == 128 and tokens.index("pi:43:5") == 13225  # ids in the public tokenizer file
    assert cfg.channels[0] == 9 and cfg.channels[cfg.bin_names.index("piano")] == 7  # percussion on MIDI ch. 10
    assert cfg.unit_ms == 8
    assert [cfg.velocity_to_bin(v) for v in (0, 1, 64, 127)] == [0, 1, 7, 11]
    for b in range(12):
        assert cfg.velocity_to_bin(cfg.bin_to_velocity(b)) == b


def test_event_text_decodes_to_hand_checked_notes() -> None:
    cfg = VocabConfig.default()
    text = "<start> pi:3c:a v:40:5 t50 pi:3c:0 pi:43:5 t125 t25 v:40:0 pi:43:0 <end> pi:50:5 t10"
    t = text_to_tune(text, repair=False)
    assert [(n.pitch, n.start, n.duration, n.channel, n.program) for n in t.notes] == [
        (60, 0, 400, 7, 0),  # piano, 50 units of 8 ms; one tick is one millisecond
        (64, 0, 1600, 5, 40),  # violin
        (67, 400, 1200, 7, 0),
    ]  # everything after <end> is ignored
    assert t.notes[0].velocity == cfg.bin_to_velocity(10) and t.seconds(1000) == pytest.approx(1.0)


def test_event_text_is_written_in_the_public_token_order() -> None:
    # Between waits: percussion first, then by instrument bin (violin before piano), then by pitch.
    notes = [Note(0, p, 1000, 70, 0, 0) for p in (67, 60, 64)] + [Note(1000, 76, 600, 58, 40, 1)]
    notes += [Note(0, 72, 496, 58, 40, 1), Note(496, 74, 504, 58, 40, 1)]
    text = midi_to_text(Tune(notes, tempo=480_000).to_midi())
    assert text == (  # the example in docs/music.md
        "<start> v:48:6 pi:3c:7 pi:40:7 pi:43:7 t62 v:48:0 v:4a:6 t63 v:4a:0 v:4c:6 pi:3c:0 pi:40:0 pi:43:0"
        " t75 v:4c:0 <end>"
    )
    assert midi_to_text(Tune(notes, tempo=480_000).to_midi(), close=False) == text.removesuffix(" <end>")


def test_a_note_held_past_the_limit_is_released_as_the_public_decoders_do() -> None:
    text = "pi:3c:5 " + "t125 " * 7 + "pi:3c:0"
    assert [n.duration for n in text_to_tune(text).notes] == [6000]  # released at the first wait past 5 s
    assert validate_midi_text(text) == []  # its own note-off, now late, is expected
    cfg = dataclasses.replace(VocabConfig.default(), decode_end_held_note_delay=0.0)
    assert [n.duration for n in text_to_tune(text, cfg).notes] == [7000]


def _random_tune(rng: random.Random, cfg: VocabConfig) -> list[Note]:
    """Notes on the 8 ms grid for several bins, drums included, no two of one pitch overlapping."""
    notes, busy = [], {}
    for _ in range(120):
        instrument = rng.randrange(len(cfg.bin_names))
        pitch = rng.randrange(30, 100)
        start = rng.randrange(0, 2500) * 8
        duration = rng.randrange(1, 300) * 8
        key = (instrument, pitch)
        if any(s < start + duration and start < e for s, e in busy.get(key, [])):
            continue
        busy.setdefault(key, []).append((start, start + duration))
        channel = cfg.channels[instrument]
        program = 0 if channel == 9 else cfg.bin_programs[instrument]
        velocity = cfg.bin_to_velocity(rng.randrange(1, cfg.velocity_bins))
        notes.append(Note(start, pitch, duration, velocity, program, channel))
    return sorted(notes)


def test_text_to_midi_to_text_keeps_every_note() -> None:
    cfg = VocabConfig.default()
    rng = random.Random(7)
    for _ in range(5):
        notes = _random_tune(rng, cfg)
        text = midi_to_text(Tune(notes, ticks_per_beat=480, tempo=480_000).to_midi(), cfg)
        assert validate_midi_text(text, cfg) == []
        back = Tune.from_midi(text_to_midi(text, cfg, repair=False))
        assert back.notes == notes  # on the grid and in the bins already, so exact
        assert midi_to_text(text_to_midi(text, cfg), cfg) == text


def _scratch_midi() -> tuple[bytes, list[tuple[int, int, float, float]]]:
    """A .mid written with mido alone: two tracks, 96 ticks per beat, a tempo change, chords, a violin and a
    bass on other channels, drums on channel 10, a 3.5 s rest and a re-struck piano note. Also the expected
    (program, pitch, start s, end s) after the text round trip, with the re-struck note cut short."""
    mid = mido.MidiFile(type=1, ticks_per_beat=96)
    meta, music = mido.MidiTrack(), mido.MidiTrack()
    mid.tracks += [meta, music]
    meta += [
        mido.MetaMessage("set_tempo", tempo=500_000, time=0),
        mido.MetaMessage("set_tempo", tempo=750_000, time=384),
    ]
    events = [  # absolute tick, message
        (0, mido.Message("program_change", channel=1, program=41)),  # viola -> violin bin (program 40)
        (0, mido.Message("program_change", channel=2, program=33)),  # fingered bass -> bass bin (program 32)
        *[(0, mido.Message("note_on", channel=0, note=p, velocity=90)) for p in (60, 64, 67)],  # a chord
        *[(96, mido.Message("note_off", channel=0, note=p)) for p in (60, 64, 67)],
        (0, mido.Message("note_on", channel=1, note=76, velocity=60)),
        (192, mido.Message("note_off", channel=1, note=76)),
        (48, mido.Message("note_on", channel=2, note=40, velocity=100)),
        (144, mido.Message("note_on", channel=2, note=40, velocity=0)),
        (0, mido.Message("note_on", channel=9, note=36, velocity=120)),  # kick drum
        (24, mido.Message("note_off", channel=9, note=36)),
        (192, mido.Message("note_on", channel=0, note=72, velocity=80)),  # re-struck while sounding
        (288, mido.Message("note_on", channel=0, note=72, velocity=80)),
        (384, mido.Message("note_off", channel=0, note=72)),  # the first ends here ...
        (480, mido.Message("note_off", channel=0, note=72)),  # ... the second here (first on, first off)
        (480 + 448, mido.Message("note_on", channel=0, note=62, velocity=70)),  # after 3.5 s of rest at 750000
        (480 + 448 + 96, mido.Message("note_off", channel=0, note=62)),
    ]
    now = 0
    for tick, msg in sorted(events, key=lambda e: e[0]):
        music.append(msg.copy(time=tick - now))
        now = tick

    def s(tick: int) -> float:  # 0.5 s per beat until tick 384 (2 s), then 0.75 s per beat
        return tick / 96 * 0.5 if tick <= 384 else 2.0 + (tick - 384) / 96 * 0.75

    expected = [(0, p, 0.0, s(96)) for p in (60, 64, 67)] + [(40, 76, 0.0, s(192)), (32, 40, s(48), s(144))]
    expected += [(0, 36, s(0), s(24)), (0, 72, s(192), s(288)), (0, 72, s(288), s(480)), (0, 62, s(928), s(1024))]
    out = io.BytesIO()
    mid.save(file=out)
    return out.getvalue(), sorted(expected)


def test_a_midi_file_made_from_scratch_survives_text_and_back() -> None:
    data, expected = _scratch_midi()
    text = midi_to_text(data)
    assert "t125 t125 t125" in text and "p:24:" in text  # the long rest as repeated waits; the kick drum
    back = Tune.from_midi(text_to_midi(text, repair=False))
    got = sorted((n.program, n.pitch, back.seconds(n.start), back.seconds(n.end)) for n in back.notes)
    assert [(p, n) for p, n, _, _ in got] == [(p, n) for p, n, _, _ in expected]
    for (_, _, start, end), (_, _, want_start, want_end) in zip(got, expected, strict=True):
        assert abs(start - want_start) <= 0.0041 and abs(end - want_end) <= 0.0041  # half of the 8 ms unit
    drums = [n for n in back.notes if n.pitch == 36]
    assert drums[0].channel == 9


def test_impossible_events_are_skipped_and_reported() -> None:
    text = "<start> zz:3c:5 pi:80:5 pi:3c:c pi:40:0 hello t0 t999 pi:3c:5 t10 pi:3c:0"
    problems = validate_midi_text(text)
    assert len(problems) == 7
    assert all(
        p.startswith(f"token {i} {t!r}:") for p, (i, t) in zip(problems, enumerate(text.split()[1:8], 2), strict=True)
    )
    assert "unknown instrument" in problems[0] and "out of range" in problems[1] and "without a note-on" in problems[3]
    with pytest.raises(MusicError, match="token 2 'zz:3c:5'"):
        text_to_midi(text, repair=False)
    t = Tune.from_midi(text_to_midi(text))
    assert [(n.pitch, n.start, n.duration) for n in t.notes] == [(60, 999 * 8, 80)]


@pytest.mark.parametrize("data", [b"", b"not a midi file", b"MThd\x00\x00\x00\x06\x00\x01"])
def test_a_broken_midi_file_is_refused(data: bytes) -> None:
    with pytest.raises(MusicError, match="not a readable MIDI file: .") as e:
        midi_to_text(data)
    assert not str(e.value).endswith(": "), "the reason must not be empty"


def test_damaged_midi_files_and_random_event_text_raise_only_music_error() -> None:
    rng = random.Random(99)
    good = abc_to_midi((TUNES / "the_kesh.abc").read_text())
    for _ in range(300):
        damaged = bytearray(good)
        for _ in range(rng.randint(1, 5)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            midi_to_text(bytes(damaged[: rng.randrange(len(damaged) // 2, len(damaged) + 1)]))
        except MusicError:
            pass
    tokens = VocabConfig.default().tokens() + ["t0", "t126", "zz:1:1", "pi:zz:1", "x", "PI:3C:5", "t", "::"]
    for _ in range(300):
        text = " ".join(rng.choices(tokens, k=rng.randint(0, 60)))
        assert validate_midi_text(midi_to_text(text_to_midi(text))) == []


def _piano_config() -> dict:
    names = {str(p): f"Program {p}" for p in range(128)}
    return {
        "note_events": 128,
        "wait_events": 125,
        "max_wait_time": 1000,
        "velocity_events": 128,
        "velocity_bins": 16,
        "velocity_exp": 0.33,
        "do_token_sorting": True,
        "unrolled_tokens": False,
        "decode_end_held_note_delay": 5.0,
        "decode_fix_repeated_notes": True,
        "bin_instrument_names": ["piano"],
        "ch10_instrument_bin_name": "",
        "program_name_to_bin_name": {name: ("piano" if int(p) < 8 else "") for p, name in names.items()},
        "bin_name_to_program_name": {"piano": "Program 0"},
        "instrument_names": names,
    }


def test_a_vocab_config_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "vocab_config.json"
    path.write_text(json.dumps(_piano_config()))
    cfg = VocabConfig.from_json(path)
    assert cfg.short_names == ("p",) and len(cfg.tokens()) == 3 + 125 + 128 * 16 and cfg.channels == (0,)
    notes = [Note(0, 60, 480, 100, 0, 0), Note(0, 36, 240, 100, 0, 9), Note(240, 64, 480, 50, 40, 1)]
    text = midi_to_text(Tune(notes, tempo=480_000).to_midi(), cfg)
    assert text.split() == ["<start>", f"p:3c:{cfg.velocity_to_bin(100):x}", "t60", "p:3c:0", "<end>"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"wait_events": 7}, "whole multiple"),
        ({"unrolled_tokens": True}, "unrolled"),
        ({"ch10_instrument_bin_name": "drums"}, "not an instrument bin"),
        ({"bin_instrument_names": []}, "1-16"),
        ({"instrument_names": None}, "malformed"),
    ],
)
def test_a_bad_vocab_config_is_refused(change: dict, message: str) -> None:
    with pytest.raises(MusicError, match=message):
        VocabConfig.from_dict({**_piano_config(), **change})


def test_a_missing_vocab_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MusicError, match="cannot read"):
        VocabConfig.from_json(tmp_path / "nope.json")


# -- external tools -------------------------------------------------------------------------------------------


def test_sheet_music_svg(tmp_path: Path) -> None:
    need("abcm2ps")
    out = tools.abc_to_svg((TUNES / "the_kesh.abc").read_text(), tmp_path / "kesh.svg")
    assert out == tmp_path / "kesh.svg" and "<svg" in out.read_text()[:500]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kesh.svg"]  # the work folder is gone


def test_audio_wav(tmp_path: Path) -> None:
    need("fluidsynth")
    need("soundfont")
    out = tools.midi_to_wav(
        abc_to_midi((TUNES / "twinkle.abc").read_text()), tmp_path / "a" / "t.wav", sample_rate=22050
    )
    data = out.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) > 22050 * 4  # over a second of stereo
    with pytest.raises(tools.ToolUnavailable, match="fluid-soundfont-gm"):
        tools.midi_to_wav(b"", tmp_path / "x.wav", soundfont=tmp_path / "missing.sf2")


def test_abc2midi_failure_is_a_music_error(tmp_path: Path) -> None:
    need("abc2midi")
    with pytest.raises(MusicError, match="abc2midi"):
        tools.run_abc2midi("no tune here", tmp_path / "x.mid")


def test_missing_tools_say_which_package_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert tools.available()["abcm2ps"] is False
    with pytest.raises(tools.ToolUnavailable, match="apt-get install abcm2ps"):
        tools.abc_to_svg("X:1\nK:C\nC|\n", tmp_path / "x.svg")
    with pytest.raises(tools.ToolUnavailable, match="apt-get install abcmidi"):
        tools.run_abc2midi("X:1\nK:C\nC|\n", tmp_path / "x.mid")
    with pytest.raises(tools.ToolUnavailable, match="apt-get install fluidsynth"):
        tools.midi_to_wav(b"", tmp_path / "x.wav")


def test_music_is_imported_only_when_asked_for() -> None:
    code = (
        "import sys, rwkv_hub.cli; from rwkv_hub.hub.plugins import PluginHost; PluginHost().load(); "
        "print('rwkv_hub.music' in sys.modules, 'mido' in sys.modules); "
        "import rwkv_hub.music; print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False", "False", "False"], result.stderr
