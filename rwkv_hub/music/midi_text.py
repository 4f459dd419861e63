"""MIDI event text, the format RWKV-4-MIDI models read and write, to and from .mid files.

The format is the one of the MIDI-LLM-tokenizer project (docs/music.md has the details and sources):
tokens separated by spaces; `tN` waits N time units (8 ms by default, N at most 125); `{instrument}:{pitch
in hex}:{velocity bin in hex}` starts a note, or ends it when the bin is 0; `<start>`, `<end>`, `<pad>`.
Instruments are bins of General MIDI programs named by a short prefix ("pi" piano, "p" percussion on
channel 10). Times are kept in milliseconds (one tick per millisecond in the .mid files written here).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from math import ceil
from pathlib import Path

from .notes import DRUM_CHANNEL, MusicError, Note, Tune

_WAIT = re.compile(r"t(\d+)")
_NOTE = re.compile(r"([a-z]+):([0-9a-f]+):([0-9a-f]+)")

# RWKV Runner's midi_vocab_config.json, which matches the tokenizer-midi.json shipped with RWKV-4-MIDI:
# (first program, last program, instrument bin), "" for programs the vocabulary has no instrument for.
_DEFAULT_BINS = ("percussion", "drum", "tuba", "marimba", "bass", "guitar", "violin", "trumpet", "piano", "sax")
_DEFAULT_BINS += ("flute", "lead", "pad")
_DEFAULT_PROGRAM_RANGES = [
    (0, 7, "piano"), (8, 16, "marimba"), (17, 23, "piano"), (24, 31, "guitar"), (32, 39, "bass"),
    (40, 41, "violin"), (42, 43, "bass"), (44, 46, "violin"), (47, 47, "drum"), (48, 54, "violin"),
    (55, 55, ""), (56, 56, "trumpet"), (57, 58, "tuba"), (59, 63, "trumpet"), (64, 68, "sax"),
    (69, 69, "trumpet"), (70, 71, "sax"), (72, 79, "flute"), (80, 84, "lead"), (85, 85, "violin"),
    (86, 87, "lead"), (88, 90, "pad"), (91, 91, "violin"), (92, 95, "pad"), (96, 103, ""),
    (104, 108, "guitar"), (109, 109, "sax"), (110, 110, "violin"), (111, 111, "sax"), (112, 115, "marimba"),
    (116, 118, "drum"), (119, 127, ""),
]  # fmt: skip
_DEFAULT_BIN_PROGRAMS = {"piano": 0, "marimba": 12, "drum": 118, "guitar": 25, "bass": 32, "violin": 40}
_DEFAULT_BIN_PROGRAMS |= {"trumpet": 56, "tuba": 58, "sax": 66, "flute": 73, "lead": 80, "pad": 88}
_OPTIONAL_KEYS = ("note_events", "wait_events", "max_wait_time", "velocity_events", "velocity_bins", "velocity_exp")
_OPTIONAL_KEYS += ("do_token_sorting", "decode_end_held_note_delay")  # decode_fix_repeated_notes is always on


@dataclass(frozen=True)
class VocabConfig:
    """The settings of a MIDI model's vocabulary (its vocab_config.json), as far as conversion needs them.

    `program_bins[p]` is the instrument bin of General MIDI program p ("" = not representable);
    `bin_programs[i]` is the program written for bin i; `drum_bin` is the bin of MIDI channel 10.
    """

    bin_names: tuple[str, ...]
    program_bins: tuple[str, ...]
    bin_programs: tuple[int, ...]
    drum_bin: str = "percussion"
    note_events: int = 128
    wait_events: int = 125
    max_wait_time: int = 1000  # milliseconds a single wait token can express
    velocity_events: int = 128
    velocity_bins: int = 12
    velocity_exp: float = 0.5
    do_token_sorting: bool = True
    decode_end_held_note_delay: float = 5.0  # seconds; notes held longer are released on decoding; 0 = never

    def __post_init__(self) -> None:
        problems = []
        if self.wait_events < 1 or self.max_wait_time % self.wait_events:
            problems.append("max_wait_time must be a whole multiple of wait_events")
        if self.velocity_bins < 2 or self.velocity_exp <= 0 or self.velocity_events < 2:
            problems.append("velocity_bins must be 2 or more and velocity_exp above 0")
        if not 1 <= len(self.bin_names) <= 16 or len(set(self.bin_names)) != len(self.bin_names):
            problems.append("bin_instrument_names must hold 1-16 distinct names")
        if self.drum_bin and self.drum_bin not in self.bin_names:
            problems.append(f"ch10_instrument_bin_name {self.drum_bin!r} is not an instrument bin")
        if len(self.program_bins) != 128 or not set(self.program_bins) <= {"", *self.bin_names}:
            problems.append("every General MIDI program must map to an instrument bin or to ''")
        if len(self.bin_programs) != len(self.bin_names) or not all(0 <= p <= 127 for p in self.bin_programs):
            problems.append("each instrument bin needs a program 0-127")
        if not 1 <= self.note_events <= 128:
            problems.append("note_events must be 1-128")
        if problems:
            raise MusicError("MIDI vocabulary config: " + "; ".join(problems))

    @classmethod
    def default(cls) -> VocabConfig:
        """The vocabulary of the released RWKV-4-MIDI models (RWKV Runner's midi_vocab_config.json)."""
        programs = [""] * 128
        for first, last, name in _DEFAULT_PROGRAM_RANGES:
            programs[first : last + 1] = [name] * (last - first + 1)
        return cls(
            bin_names=_DEFAULT_BINS,
            program_bins=tuple(programs),
            bin_programs=tuple(_DEFAULT_BIN_PROGRAMS.get(name, 0) for name in _DEFAULT_BINS),
        )

    @classmethod
    def from_dict(cls, data: dict) -> VocabConfig:
        """Read the keys of a MIDI-LLM-tokenizer vocab_config.json; missing optional keys take the defaults."""
        try:
            if data.get("unrolled_tokens"):
                raise MusicError("MIDI vocabulary config: unrolled tokens (separate n/v/i tokens) are not supported")
            names = {int(p): name for p, name in data["instrument_names"].items()}
            program_of = {name: p for p, name in names.items()}
            to_bin, bins = data["program_name_to_bin_name"], tuple(data["bin_instrument_names"])
            bin_to_name = data.get("bin_name_to_program_name", {})
            optional = {k: data[k] for k in _OPTIONAL_KEYS if k in data}
            return cls(
                bin_names=bins,
                program_bins=tuple(to_bin.get(names.get(p, ""), "") for p in range(128)),
                bin_programs=tuple(program_of.get(bin_to_name.get(b, ""), 0) for b in bins),
                drum_bin=data.get("ch10_instrument_bin_name", ""),
                **optional,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise MusicError(f"MIDI vocabulary config is malformed: {type(e).__name__} {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> VocabConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise MusicError(f"cannot read the MIDI vocabulary config {path}: {e}") from None
        if not isinstance(data, dict):
            raise MusicError(f"MIDI vocabulary config {path} is not a JSON object")
        return cls.from_dict(data)

    @cached_property
    def short_names(self) -> tuple[str, ...]:
        """Each bin's token prefix: the shortest start of its name that no earlier bin took."""
        taken: list[str] = []
        for name in self.bin_names:
            size = 1
            while name[:size] in taken and size < len(name):
                size += 1
            taken.append(name[:size])
        return tuple(taken)

    @cached_property
    def channels(self) -> tuple[int, ...]:
        """Each bin's MIDI channel: the drum bin on channel 10 (9 from zero), the others in order around it."""
        free = iter(c for c in range(16) if c != DRUM_CHANNEL)
        return tuple(DRUM_CHANNEL if name == self.drum_bin else next(free) for name in self.bin_names)

    @property
    def unit_ms(self) -> int:
        return self.max_wait_time // self.wait_events

    def tokens(self) -> list[str]:
        """The whole vocabulary in id order, as in the model's tokenizer-midi.json."""
        waits = [f"t{i}" for i in range(1, self.wait_events + 1)]
        notes = [
            f"{short}:{pitch:x}:{v:x}"
            for short in self.short_names
            for pitch in range(self.note_events)
            for v in range(self.velocity_bins)
        ]
        return ["<pad>", "<start>", "<end>", *waits, *notes]

    def velocity_to_bin(self, velocity: int) -> int:
        """Quantize a MIDI velocity; bins grow wider towards loud when velocity_exp < 1."""
        share = min(max(velocity, 0), self.velocity_events - 1) / self.velocity_events
        if self.velocity_exp != 1.0:
            share = (self.velocity_exp**share - 1.0) / (self.velocity_exp - 1.0)
        return ceil(share * (self.velocity_bins - 1))

    @cached_property
    def _velocities(self) -> tuple[int, ...]:
        """For each bin, the loudest velocity that quantizes to it or below (0 for the note-off bin)."""
        bins = [self.velocity_to_bin(v) for v in range(1, min(self.velocity_events, 128))]
        loudest = (max((v for v, b in enumerate(bins, 1) if b <= i), default=1) for i in range(1, self.velocity_bins))
        return (0, *loudest)

    def bin_to_velocity(self, velocity_bin: int) -> int:
        """The loudest velocity in the bin, so that quantizing it again gives the same bin."""
        return self._velocities[max(0, min(velocity_bin, self.velocity_bins - 1))]


def _parse(text: str, config: VocabConfig) -> tuple[Tune, list[str]]:
    """Decode the text into notes, listing every impossible event it skipped."""
    if not isinstance(text, str):
        raise MusicError(f"MIDI event text must be text, not {type(text).__name__}")
    short = {name: i for i, name in enumerate(config.short_names)}
    limit = config.decode_end_held_note_delay * 1000
    repairs: list[str] = []
    notes: list[Note] = []
    sounding: dict[tuple[int, int], tuple[int, int, int]] = {}  # (channel, pitch) -> start ms, velocity, program
    held_too_long: set[tuple[int, int]] = set()  # released by decode_end_held_note_delay; their note-off is due
    now = 0

    def release(key: tuple[int, int], where: str) -> None:
        start, velocity, program = sounding.pop(key)
        if now > start:
            notes.append(Note(start, key[1], now - start, velocity, program, key[0]))
        else:
            repairs.append(f"{where}: the note {key[1]} on channel {key[0] + 1} ends where it starts; dropped")

    for index, raw in enumerate(text.split(), 1):
        token, where = raw.lower(), f"token {index} {raw!r}"
        if token in ("<start>", "<pad>"):
            continue
        if token == "<end>":
            break
        if m := _WAIT.fullmatch(token):
            units = int(m.group(1))
            if not 1 <= units <= config.wait_events:
                repairs.append(f"{where}: waits are t1-t{config.wait_events}; read as {units} time units")
            now += units * config.unit_ms
            for key in [k for k, (start, _, _) in sounding.items() if limit and now - start > limit]:
                release(key, where)
                held_too_long.add(key)
            continue
        m = _NOTE.fullmatch(token)
        if not m or m.group(1) not in short:
            what = "an unknown instrument" if m else "not a MIDI event"
            repairs.append(f"{where}: {what}; skipped")
            continue
        instrument, pitch, velocity_bin = short[m.group(1)], int(m.group(2), 16), int(m.group(3), 16)
        if pitch >= config.note_events or velocity_bin >= config.velocity_bins:
            repairs.append(f"{where}: pitch or velocity bin out of range; skipped")
            continue
        key = (config.channels[instrument], pitch)
        if velocity_bin == 0:
            if key in sounding:
                release(key, where)
            elif key in held_too_long:
                held_too_long.discard(key)
            else:
                repairs.append(f"{where}: a note-off without a note-on; skipped")
            continue
        held_too_long.discard(key)
        if key in sounding:
            release(key, where)  # a re-struck note ends the one still sounding: a channel holds one per pitch
        program = 0 if config.channels[instrument] == DRUM_CHANNEL else config.bin_programs[instrument]
        sounding[key] = (now, config.bin_to_velocity(velocity_bin), program)
    for key in list(sounding):
        release(key, "at the end")
    return Tune(notes=sorted(notes), ticks_per_beat=480, tempo=480_000), repairs  # one tick = one millisecond


def validate_midi_text(text: str, config: VocabConfig | None = None) -> list[str]:
    """Every impossible event in the text (unknown token or instrument, pitch out of range, a note-off
    without a note-on, a zero-length note), each naming its token; empty when the text is clean."""
    return _parse(text, config or VocabConfig.default())[1]


def text_to_tune(text: str, config: VocabConfig | None = None, *, repair: bool = True) -> Tune:
    """Decode MIDI event text. With repair (the default) impossible events are skipped; without, the
    first one raises MusicError. Notes still sounding at the end (or at `<end>`) end there."""
    tune, repairs = _parse(text, config or VocabConfig.default())
    if repairs and not repair:
        raise MusicError(f"MIDI event text: {repairs[0]}")
    return tune


def text_to_midi(text: str, config: VocabConfig | None = None, *, repair: bool = True) -> bytes:
    """MIDI event text to the bytes of a .mid file (see text_to_tune for `repair`)."""
    return text_to_tune(text, config, repair=repair).to_midi()


def midi_to_text(data: bytes, config: VocabConfig | None = None, *, close: bool = True) -> str:
    """A .mid file as MIDI event text: `<start>`, the events, and `<end>` unless close is False (to use
    the text as a prompt to continue). Times are quantized to the time unit, velocities to their bins;
    notes of programs the vocabulary lacks (and drums, when it has no drum bin) are left out; a note
    re-struck while it sounds is cut where the new one starts, as the format's decoders do."""
    config = config or VocabConfig.default()
    tune = Tune.from_midi(data)
    index = {name: i for i, name in enumerate(config.bin_names)}
    unit = config.unit_ms
    spans: dict[tuple[int, int], list[list[int]]] = {}  # (bin, pitch) -> [start, end, velocity bin] in units
    for n in tune.notes:
        name = config.drum_bin if n.channel == DRUM_CHANNEL else config.program_bins[n.program]
        if not name or n.pitch >= config.note_events:
            continue
        start = round(tune.seconds(n.start) * 1000 / unit)
        end = max(start + 1, round(tune.seconds(n.end) * 1000 / unit))
        spans.setdefault((index[name], n.pitch), []).append([start, end, config.velocity_to_bin(n.velocity)])
    events: list[tuple[int, int, int, int, int]] = []  # time, bin, pitch, 0 off / 1 on, velocity bin
    for (instrument, pitch), notes in spans.items():
        notes.sort()
        kept = [a for a, b in zip(notes, notes[1:], strict=False) if a[0] < b[0]] + notes[-1:]  # same start: last
        for a, b in zip(kept, kept[1:], strict=False):
            a[1] = min(a[1], b[0])
        for start, end, velocity_bin in kept:
            events += [(start, instrument, pitch, 1, velocity_bin), (end, instrument, pitch, 0, 0)]
    drum = index.get(config.drum_bin, -1)
    if config.do_token_sorting:
        events.sort(key=lambda e: (e[0], e[1] != drum, e[1], e[2], e[3]))
    else:
        events.sort(key=lambda e: (e[0], e[3]))
    out, now = ["<start>"], 0
    for time, instrument, pitch, _, velocity_bin in events:
        wait = time - now
        out += [f"t{config.wait_events}"] * (wait // config.wait_events)
        out += [f"t{wait % config.wait_events}"] if wait % config.wait_events else []
        out.append(f"{config.short_names[instrument]}:{pitch:x}:{velocity_bin:x}")
        now = time
    return " ".join(out + ["<end>"] * close)
