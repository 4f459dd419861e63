"""The note list both converters meet in, and the one place that reads and writes .mid files (via mido).

Times are integer MIDI ticks (`Tune.ticks_per_beat` per quarter note) rather than seconds: ABC durations
are exact fractions of a beat, so ticks keep them exact, and a .mid file stores ticks anyway.
`Tune.seconds()` converts with the tune's single tempo.
"""

from __future__ import annotations

import io
from collections import defaultdict, deque
from dataclasses import dataclass, field
from fractions import Fraction

import mido

from rwkv_hub.core.errors import RWKVHubError

DRUM_CHANNEL = 9  # MIDI channel 10, counted from zero as mido does


class MusicError(RWKVHubError):
    """Notation or a music file that cannot be converted; the message says where and what was wrong."""


@dataclass(frozen=True, order=True)
class Note:
    """One sounding note: `start` and `duration` in ticks, `program` the General MIDI instrument (0-127)."""

    start: int
    pitch: int
    duration: int
    velocity: int = 80
    program: int = 0
    channel: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.pitch <= 127:
            raise MusicError(f"pitch {self.pitch} is outside MIDI's range 0-127")
        if not 1 <= self.velocity <= 127:
            raise MusicError(f"velocity {self.velocity} is outside 1-127")
        if not 0 <= self.program <= 127 or not 0 <= self.channel <= 15:
            raise MusicError(f"program {self.program} / channel {self.channel} out of range")
        if self.start < 0 or self.duration <= 0:
            raise MusicError(f"note at tick {self.start} has a non-positive duration {self.duration}")

    @property
    def end(self) -> int:
        return self.start + self.duration


@dataclass
class Tune:
    """Notes plus the few facts a .mid file carries about them. `tempo` is microseconds per quarter note;
    `key` is a mido key name ("G", "Em", "Bb"); `meter` is (numerator, denominator) or None."""

    notes: list[Note] = field(default_factory=list)
    ticks_per_beat: int = 480
    tempo: int = 500_000
    meter: tuple[int, int] | None = None
    key: str | None = None
    title: str = ""

    def seconds(self, ticks: int) -> float:
        return ticks * self.tempo / self.ticks_per_beat / 1e6

    def to_midi(self) -> bytes:
        """A type-0 .mid file: meta events, a program change wherever a channel's instrument changes, the notes."""
        events: list[tuple[int, int, mido.Message | mido.MetaMessage]] = []
        if self.title:
            events.append((0, 0, mido.MetaMessage("track_name", name=self.title)))
        events.append((0, 0, mido.MetaMessage("set_tempo", tempo=self.tempo)))
        if self.meter and self.meter[1] & (self.meter[1] - 1) == 0:  # MIDI can only store 2^n denominators
            num, den = self.meter
            events.append((0, 0, mido.MetaMessage("time_signature", numerator=num, denominator=den)))
        if self.key:
            try:
                events.append((0, 0, mido.MetaMessage("key_signature", key=self.key)))
            except (KeyError, ValueError):
                raise MusicError(f"key {self.key!r} is not a MIDI key signature (use e.g. 'G', 'Em', 'Bb')") from None
        program: dict[int, int] = {}
        for n in sorted(self.notes):
            if program.get(n.channel) != n.program:
                program[n.channel] = n.program
                events.append((n.start, 1, mido.Message("program_change", channel=n.channel, program=n.program)))
        for n in self.notes:
            # At equal ticks a note-off (2) sorts before a note-on (3), so a re-struck pitch is not cut short.
            events.append((n.start, 3, mido.Message("note_on", channel=n.channel, note=n.pitch, velocity=n.velocity)))
            events.append((n.end, 2, mido.Message("note_off", channel=n.channel, note=n.pitch, velocity=0)))
        events.sort(key=lambda e: (e[0], e[1]))
        track = mido.MidiTrack()
        now = 0
        for tick, _, msg in events:
            if tick - now > 0x0FFFFFFF:
                raise MusicError(f"a gap of {tick - now} ticks is longer than a MIDI file can hold")
            track.append(msg.copy(time=tick - now))
            now = tick
        track.append(mido.MetaMessage("end_of_track", time=0))
        out = io.BytesIO()
        mido.MidiFile(type=0, ticks_per_beat=self.ticks_per_beat, tracks=[track]).save(file=out)
        return out.getvalue()

    @classmethod
    def from_midi(cls, data: bytes) -> Tune:
        """Read a .mid file. Overlapping notes of one pitch pair first-on with first-off; a later tempo
        change is folded into the ticks (measured at the first tempo) so the timing in seconds is kept."""
        try:
            mid = mido.MidiFile(file=io.BytesIO(data))
        except Exception as e:  # mido raises many kinds (EOFError, KeySignatureError, ...) for damaged files
            raise MusicError(f"not a readable MIDI file: {str(e) or type(e).__name__}") from None
        tune = cls(ticks_per_beat=mid.ticks_per_beat)
        tempo: int | None = None
        base_tick, base_out = 0, Fraction(0)  # where the current tempo began, in file ticks and in our ticks
        scale = Fraction(1)
        program = [0] * 16
        sounding: dict[tuple[int, int], deque[tuple[int, int, int]]] = defaultdict(deque)
        notes: list[Note] = []
        tick = 0

        def out_tick(t: int) -> int:
            return round(base_out + (t - base_tick) * scale)

        for msg in mido.merge_tracks(mid.tracks):
            tick += msg.time
            if msg.type == "set_tempo":
                if tempo is None:
                    tempo = tune.tempo = msg.tempo
                else:
                    base_out, base_tick = base_out + (tick - base_tick) * scale, tick
                    scale = Fraction(msg.tempo, tempo)
            elif msg.type == "time_signature" and tune.meter is None:
                tune.meter = (msg.numerator, msg.denominator)
            elif msg.type == "key_signature" and tune.key is None:
                tune.key = msg.key
            elif msg.type == "track_name" and not tune.title:
                tune.title = msg.name
            elif msg.type == "program_change":
                program[msg.channel] = msg.program
            elif msg.type == "note_on" and msg.velocity > 0:
                sounding[msg.channel, msg.note].append((out_tick(tick), msg.velocity, program[msg.channel]))
            elif msg.type in ("note_on", "note_off") and sounding[msg.channel, msg.note]:
                start, velocity, prog = sounding[msg.channel, msg.note].popleft()
                end = out_tick(tick)
                if end > start:
                    notes.append(Note(start, msg.note, end - start, velocity, prog, msg.channel))
        end = out_tick(tick)
        for (channel, pitch), queue in sounding.items():
            notes.extend(Note(s, pitch, end - s, v, p, channel) for s, v, p in queue if end > s)
        tune.notes = sorted(notes)
        return tune
