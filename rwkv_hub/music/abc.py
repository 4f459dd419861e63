"""ABC notation (the subset RWKV's ABC models write) to a Tune and a .mid file, with validation and repair.

One reader serves all four entry points: it walks the text, records each problem with its line, column
and (where the fix is obvious) a text edit, and reads on. `validate_abc` lists the problems,
`parse_abc(text, repair=False)` raises the first as a MusicError, `repair_abc` applies the edits (again,
until none is left, since dropping a character can join its neighbours into something new), and
`parse_abc(text)` reads what `repair_abc` writes. docs/music.md lists the subset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction

from .notes import MusicError, Note, Tune

TICKS_PER_BEAT = 480
_STEPS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_FIFTHS = {"F": -1, "C": 0, "G": 1, "D": 2, "A": 3, "E": 4, "B": 5}  # place on the circle of fifths
_MODES = {"maj": 0, "ion": 0, "mix": -1, "dor": -2, "aeo": -3, "min": -3, "m": -3, "phr": -4, "lyd": 1, "loc": -5}
_MAJOR = ["Cb", "Gb", "Db", "Ab", "Eb", "Bb", "F", "C", "G", "D", "A", "E", "B", "F#", "C#"]  # by sharps + 7
_MINOR = ["Abm", "Ebm", "Bbm", "Fm", "Cm", "Gm", "Dm", "Am", "Em", "Bm", "F#m", "C#m", "G#m", "D#m", "A#m"]
_ACCIDENTALS = {"^^": 2, "^": 1, "=": 0, "_": -1, "__": -2}
_DECORATIONS = set(".~HLMOPSTuv")  # one-character decorations: they change no pitch or time
_SKIPPED = set(" \t`$y\\)")  # spacing, line continuation, slur ends
_FIELD_LINE = re.compile(r"([A-Za-z+]):(?![|:])(.*)")
_NOTE = re.compile(r"(\^\^|\^|__|_|=)?([A-Ga-g])([,']*)(\d*)(/*)(\d*)")
_LENGTH = re.compile(r"(\d*)(/*)(\d*)")
_TUPLET = re.compile(r"\((\d)(?::(\d?))?(?::(\d?))?")
_ENDING = re.compile(r"\d+(?:[,-]\d+)*")
_CHORD_NAME = re.compile(r"(?:[A-G][#b]?(?:maj|min|dim|aug|sus|add|m|M|\+|o)?\d*(?:/[A-G][#b]?)?)?")
_GRACE = re.compile(r"[\^_=A-Ga-g,'/\d]*")
_KEY = re.compile(r"\s*(?:(none)\b|(HP|Hp)\b|([A-G])([#b]?))(.*)", re.DOTALL)


@dataclass
class _Problem:
    line: int
    col: int
    message: str
    fix: tuple[int, int, str] | None  # replace text[start:end] with this, in offsets of the whole text

    def __str__(self) -> str:
        return f"line {self.line}, column {self.col}: {self.message}"


@dataclass
class _Element:
    """A note, chord or rest as written: pitches with their own lengths and ties, and the time it takes."""

    notes: list[list] = field(default_factory=list)  # [pitch, length (whole notes), tied to the next]
    advance: Fraction = Fraction(0)

    def scale(self, factor: Fraction) -> None:
        for n in self.notes:
            n[1] *= factor
        self.advance *= factor


@dataclass
class _Bar:
    end_repeat: bool
    start_repeat: bool
    double: bool


@dataclass
class _Ending:
    passes: set[int]


@dataclass
class _Key:
    name: str  # mido key name for the .mid file
    accidentals: dict[str, int]  # letter -> semitones


def _parse_key(value: str) -> _Key | None:
    m = _KEY.match(value)
    if not value.strip():
        return _Key("C", {})
    if not m:
        return None
    none, pipes, tonic, tonic_acc, rest = m.groups()
    words = rest.split()
    sharps, minor = 0, False
    if pipes:
        sharps = 2 if pipes == "Hp" else 0
    elif tonic:
        sharps = _FIFTHS[tonic] + {"#": 7, "b": -7, "": 0}[tonic_acc]
        if words and words[0].lower()[:3] in _MODES:
            mode = words.pop(0).lower()[:3]
            sharps += _MODES[mode]
            minor = mode in ("m", "min", "aeo")
        elif rest[:1].strip():
            return None  # e.g. "Gx": not a tonic followed by a mode
    if not -7 <= sharps <= 7:
        return None
    order = "FCGDAEB" if sharps > 0 else "BEADGCF"
    accidentals = {letter: 1 if sharps > 0 else -1 for letter in order[: abs(sharps)]}
    for word in words:
        if word.lower() == "exp":
            accidentals = {}
        elif m2 := re.fullmatch(r"(\^\^|\^|__|_|=)([A-Ga-g])", word):
            accidentals[m2.group(2).upper()] = _ACCIDENTALS[m2.group(1)]
    name = "C" if none else (_MINOR if minor else _MAJOR)[sharps + 7]
    return _Key(name, accidentals)


def _parse_meter(value: str) -> tuple[int, int] | None | bool:
    """(num, den); None for free meter; False when unreadable."""
    v = value.strip()
    if v in ("", "none"):
        return None
    if v in ("C", "C|"):
        return (4, 4) if v == "C" else (2, 2)
    m = re.fullmatch(r"\(?([\d+]+)\)?\s*/\s*(\d+)", v)
    if not m or not all(m.group(1).split("+")) or int(m.group(2)) == 0:
        return False
    return sum(int(x) for x in m.group(1).split("+")), int(m.group(2))


def _parse_unit(value: str) -> Fraction | None:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    return Fraction(int(m.group(1)), int(m.group(2))) if m and int(m.group(1)) and int(m.group(2)) else None


def _parse_tempo(value: str) -> int | None:
    """Microseconds per quarter note from Q: ("1/4=120", "3/8=100", "120" as quarter notes, text ignored)."""
    text = re.sub(r'"[^"]*"', " ", value)
    m = re.search(r"((?:\d+/\d+\s*)+)=\s*(\d+)", text) or re.fullmatch(r"\s*()(\d+)\s*", text)
    if not m or int(m.group(2)) == 0:
        return None
    beat = sum((Fraction(b) for b in m.group(1).split() if not b.endswith("/0")), Fraction(0)) or Fraction(1, 4)
    tempo = round(60_000_000 / (int(m.group(2)) * beat * 4))
    return tempo if 1 <= tempo <= 0xFFFFFF else None  # what a MIDI file can store


def _default_unit(meter: tuple[int, int] | None) -> Fraction:
    """ABC's default L: a sixteenth when the meter is shorter than 3/4, else an eighth."""
    return Fraction(1, 16) if meter and Fraction(*meter) < Fraction(3, 4) else Fraction(1, 8)


def _closing_point(s: str, i: int) -> int:
    """Where an unclosed chord symbol (after its chord name, else at the first space) or grace group
    (after its notes) most likely ends."""
    if s[i] == "{":
        return _GRACE.match(s, i + 1).end()
    name = _CHORD_NAME.match(s, i + 1)
    if name.end() > i + 1:
        return name.end()
    space = re.compile(r"\s").search(s, i + 1)
    return space.start() if space else len(s.rstrip())


def _length(num: str, slashes: str, den: str) -> Fraction:
    n = int(num) if num else 1
    if not slashes:
        return Fraction(n)
    d = int(den) if den else 2
    return Fraction(n, d * 2 ** (len(slashes) - 1)) if d else Fraction(0)


class _Reader:
    """Reads one tune; see the module docstring. `items` holds elements, bars and endings as written."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.problems: list[_Problem] = []
        self.line_drops: list[tuple[int, int, str]] = []  # fixes that no problem reports (see _drop_if_emptied)
        self.items: list[_Element | _Bar | _Ending] = []
        self.fields: dict[str, str] = {}
        self.title = ""
        self.meter: tuple[int, int] | None = None
        self.unit: Fraction | None = None
        self.tempo = 500_000
        self.body_meter: tuple[int, int] | None = None
        self.key = _Key("C", {})
        self.first_key: _Key | None = None
        self.bar_accidentals: dict[str, int] = {}
        self.tuplet: tuple[int, Fraction] | None = None  # notes left, time factor
        self.broken: Fraction | None = None  # factor for the next element
        self.last_music: tuple[int, int, int] | None = None  # line, col, offset just after the last music
        self._read()

    # -- problems -------------------------------------------------------------------------------------
    def problem(self, line: int, col: int, message: str, fix: tuple[int, int, str] | None = None) -> None:
        self.problems.append(_Problem(line, col + 1, message, fix))

    # -- header and lines -----------------------------------------------------------------------------
    def _read(self) -> None:
        offset, in_body, header_end = 0, False, 0
        lines = self.text.splitlines(keepends=True)
        for number, raw in enumerate(lines, 1):
            start, offset = offset, offset + len(raw)
            line = raw.rstrip("\r\n")
            if line.startswith("%%"):
                continue
            content = re.split(r"(?<!\\)%", line, maxsplit=1)[0]
            if not content.strip():
                if in_body:
                    break  # a blank line ends the tune
                continue
            m = _FIELD_LINE.match(content)
            if m and m.group(1) == "X" and in_body:
                break  # the next tune begins
            if m and m.group(1) == "X" and "X" in self.fields:
                self.problem(number, 0, "a second X: field in the header", (start, offset, ""))
                continue
            if m:
                self._field(m.group(1), m.group(2), number, start, in_body)
                if m.group(1) == "K" and not in_body:
                    in_body, header_end = True, offset
                continue
            if not in_body:
                self.problem(number, 0, "no K: (key) field before the music; C major assumed", (start, start, "K:C\n"))
                in_body, header_end = True, start
            seen = len(self.problems)
            self._body(content, number, start)
            self._drop_if_emptied(content, start, offset, self.problems[seen:])
        self._finish(header_end if in_body else len(self.text))

    def _drop_if_emptied(self, content: str, start: int, end: int, problems: list[_Problem]) -> None:
        """A music line whose every character the repair drops would become a blank line, which ends the
        tune; so the repair drops the whole line instead and the tune goes on, as the reader read it."""
        fixes = [p.fix for p in problems if p.fix]
        if not fixes or any(replacement for _, _, replacement in fixes):
            return
        kept = list(content)
        for begin, stop, _ in fixes:
            kept[begin - start : stop - start] = " " * (stop - begin)
        if not "".join(kept).strip():
            self.line_drops.append((start, end, ""))

    def _field(self, name: str, value: str, number: int, start: int, in_body: bool) -> None:
        col, span = 2, (start + 2, start + 2 + len(value))
        if not in_body:
            self.fields.setdefault(name, value)
        if name == "T" and not self.title:
            self.title = value.strip()
        elif name in "KLMQ":
            self._set(name, value, number, col, span, header=not in_body)

    def _set(self, name: str, value: str, number: int, col: int, span: tuple[int, int], header: bool) -> None:
        """Apply an M:, L:, K: or Q: field, from a header line, a body line or an inline [X:...] field."""
        if name == "M":
            meter = _parse_meter(value)
            if meter is False:
                self.problem(number, col, f"unreadable meter M:{value.strip()!r}; 4/4 assumed", (*span, "4/4"))
                meter = (4, 4)
            if header and self.meter is None:
                self.meter = meter
            self.body_meter = meter if meter is not None else self.body_meter
        elif name == "L":
            unit = _parse_unit(value)
            if unit is None:
                self.problem(number, col, f"unreadable note length L:{value.strip()!r}; 1/8 assumed", (*span, "1/8"))
                unit = Fraction(1, 8)
            self.unit = unit
        elif name == "K":
            key = _parse_key(value)
            if key is None:
                self.problem(number, col, f"unknown key K:{value.strip()!r}; C major assumed", (*span, "C"))
                key = _Key("C", {})
            self.key = key
            self.first_key = self.first_key or key
        elif name == "Q" and header:
            tempo = _parse_tempo(value)
            if tempo is None:
                self.problem(number, col, f"unusable tempo Q:{value.strip()!r}; 1/4=120 assumed", (*span, "1/4=120"))
            self.tempo = tempo or 500_000

    # -- the music ------------------------------------------------------------------------------------
    def _body(self, s: str, number: int, start: int) -> None:
        if self.unit is None:
            self.unit = _default_unit(self.meter)
        i, n = 0, len(s)
        while i < n:
            c, j, items = s[i], i + 1, len(self.items)
            if c in _SKIPPED or c in _DECORATIONS:
                pass
            elif c in '"{':
                close = '"' if c == '"' else "}"
                end = s.find(close, i + 1)
                j = end + 1
                if end < 0:
                    what = "chord symbol or annotation" if c == '"' else "grace note group"
                    j = _closing_point(s, i)
                    self.problem(number, i, f"unclosed {what}", (start + j, start + j, close))
            elif c in "!+":
                end = s.find(c, i + 1)
                if end < 0 or not re.fullmatch(r"[^\s!+|]*", s[i + 1 : end]):
                    self.problem(number, i, f"stray {c!r}", (start + i, start + i + 1, ""))
                else:
                    j = end + 1
            elif c == "[" and re.match(r"\[[A-Za-z]:", s[i:]):
                j = self._inline_field(s, i, number, start)
            elif c == "[" and s[i + 1 : i + 2].isdigit():
                m = _ENDING.match(s, i + 1)
                self._ending(m.group(0))
                j = m.end()
            elif c == "[" and s[i + 1 : i + 2] != "|":
                j = self._chord(s, i, number, start)
            elif c in "|:[":
                j = self._bar(s, i, number, start)
            elif c in "^_=" or c.upper() in _STEPS:
                j = self._note_element(s, i, number, start)
            elif c in "zxZX":
                j = self._rest(s, i)
            elif c == "(":
                m = _TUPLET.match(s, i)
                if m:
                    self._tuplet(*m.groups())
                    j = m.end()
            elif c == "-":
                last = self.items[-1] if self.items else None
                if isinstance(last, _Element) and last.notes:
                    for note in last.notes:
                        note[2] = True
                else:
                    self.problem(number, i, "tie '-' after no note", (start + i, start + i + 1, ""))
            elif c in "<>":
                j = i + len(s[i:]) - len(s[i:].lstrip(c))
                self._broken(c, j - i, number, i, start)
            else:
                self.problem(number, i, f"unexpected character {c!r}", (start + i, start + i + 1, ""))
            if len(self.items) > items:
                self.last_music = (number, j, start + j)
            i = j

    def _inline_field(self, s: str, i: int, number: int, start: int) -> int:
        end = s.find("]", i)
        if end < 0:
            self.problem(number, i, "unclosed inline field", (start + len(s.rstrip()), start + len(s.rstrip()), "]"))
            end = len(s)
        name, value = s[i + 1], s[i + 3 : end]
        if name in "KLMQ":
            self._set(name, value, number, i + 3, (start + i + 3, start + end), header=False)
        return end + 1

    def _pitch(self, acc: str | None, letter: str, octave: str) -> int:
        upper = letter.upper()
        if acc is not None:
            self.bar_accidentals[upper] = _ACCIDENTALS[acc]
        shift = self.bar_accidentals.get(upper, self.key.accidentals.get(upper, 0))
        base = 60 if letter.isupper() else 72
        return base + _STEPS[upper] + shift + 12 * (octave.count("'") - octave.count(","))

    def _read_note(self, s: str, i: int, number: int, start: int) -> tuple[list | None, int]:
        """One note (accidental, letter, octave marks, length) at s[i]: ([pitch, length, tie], next index)."""
        m = _NOTE.match(s, i)
        if not m:
            self.problem(number, i, f"accidental {s[i]!r} without a note", (start + i, start + i + 1, ""))
            return None, i + 1
        acc, letter, octave, num, slashes, den = m.groups()
        end = m.end()
        if acc is None and not num + slashes and s[end : end + 1] == "#":  # "C#2", as musicians say it
            fix = (start + i, start + end + 1, f"^{letter}{octave}")
            self.problem(number, i, f"'{letter}#' is not ABC; a sharp is written '^{letter}'", fix)
            length_match = _LENGTH.match(s, end + 1)
            acc, (num, slashes, den), end = "^", length_match.groups(), length_match.end()
        length = _length(num, slashes, den) * self.unit
        pitch = self._pitch(acc, letter, octave)
        if not 0 <= pitch <= 127 or length == 0:
            why = "outside MIDI's range" if length else "of zero length"
            self.problem(number, i, f"note {s[i:end]!r} is {why}", (start + i, start + end, ""))
            return None, end
        tie = s[end : end + 1] == "-"
        return [pitch, length, tie], end + tie

    def _note_element(self, s: str, i: int, number: int, start: int) -> int:
        note, j = self._read_note(s, i, number, start)
        if note:
            self._add(_Element([note], note[1]))
        return j

    def _chord(self, s: str, i: int, number: int, start: int) -> int:
        notes, j = [], i + 1
        while j < len(s) and s[j] != "]":
            c = s[j]
            if c == "|" or (c == "[" and notes):
                break
            if c in "^_=" or c.upper() in _STEPS:
                note, j = self._read_note(s, j, number, start)
                notes += [note] if note else []
                continue
            if c not in " \t" and c not in _DECORATIONS:
                self.problem(number, j, f"unexpected character {c!r} in a chord", (start + j, start + j + 1, ""))
            j += 1
        closed = j < len(s) and s[j] == "]"
        m = _LENGTH.match(s, j + closed)
        factor = _length(*m.groups()) if m.group(0) else Fraction(1)
        if not notes or factor == 0:
            why = "empty chord" if not notes else "chord of zero length"
            self.problem(number, i, why, (start + i, start + (m.end() if closed else j), ""))
            return m.end() if closed else j
        if not closed:
            at = start + len(s[:j].rstrip())
            self.problem(number, i, "unclosed chord '['", (at, at, "]"))
        for note in notes:
            note[1] *= factor
        tie = s[m.end() : m.end() + 1] == "-"
        for note in notes:
            note[2] = note[2] or tie
        self._add(_Element(notes, notes[0][1]))
        return m.end() + tie

    def _rest(self, s: str, i: int) -> int:
        if s[i] in "ZX":  # whole bars of rest
            digits = re.match(r"\d*", s[i + 1 :]).group(0)
            bar = Fraction(*self.body_meter) if self.body_meter else Fraction(1)
            self._add(_Element([], int(digits or 1) * bar))
            return i + 1 + len(digits)
        m = _LENGTH.match(s, i + 1)
        self._add(_Element([], _length(*m.groups()) * self.unit))
        return m.end()

    def _add(self, element: _Element) -> None:
        if self.tuplet:
            left, factor = self.tuplet
            element.scale(factor)
            self.tuplet = (left - 1, factor) if left > 1 else None
        if self.broken is not None:
            element.scale(self.broken)
            self.broken = None
        self.items.append(element)

    def _tuplet(self, p: str, q: str | None, r: str | None) -> None:
        count = int(p)
        compound = bool(self.body_meter) and self.body_meter[0] % 3 == 0 and self.body_meter[0] > 3
        default_q = {2: 3, 3: 2, 4: 3, 6: 2, 8: 3}.get(count, 3 if compound else 2)
        if count > 1:
            self.tuplet = (int(r) if r else count, Fraction(int(q) if q else default_q, count))

    def _broken(self, c: str, count: int, number: int, i: int, start: int) -> None:
        last = self.items[-1] if self.items else None
        if not isinstance(last, _Element):
            self.problem(number, i, f"broken rhythm {c * count!r} after no note", (start + i, start + i + count, ""))
            return
        short, long = Fraction(1, 2**count), 2 - Fraction(1, 2**count)
        last.scale(long if c == ">" else short)
        self.broken = short if c == ">" else long

    def _bar(self, s: str, i: int, number: int, start: int) -> int:
        j = i + 2 if s[i] == "[" else i
        if s[i] != "[":
            while j < len(s) and s[j] == ":":
                j += 1
            while j < len(s) and s[j] == "|":
                j += 1
            if j < len(s) and s[j] == "]" and s[j - 1] == "|":
                j += 1
        while j < len(s) and s[j] == ":":
            j += 1
        token = s[i:j]
        if token == ":":
            self.problem(number, i, "stray ':'", (start + i, start + j, ""))
            return j
        double = "||" in token or "]" in token or "[" in token
        self.items.append(_Bar(token.startswith(":"), token.endswith(":"), double))
        self.bar_accidentals = {}
        m = _ENDING.match(s, j)
        if m:
            self._ending(m.group(0))
            return m.end()
        return j

    def _ending(self, spec: str) -> None:
        passes: set[int] = set()
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            passes.update(p for p in (1, 2) if int(lo) <= p <= int(hi or lo))  # repeats are played twice
        self.items.append(_Ending(passes))

    # -- the end --------------------------------------------------------------------------------------
    def _finish(self, header_end: int) -> None:
        if "X" not in self.fields:
            self.problem(1, 0, "no X: (reference number) field; abc tools need one", (0, 0, "X:1\n"))
        if self.first_key is None and not any(p.message.startswith("no K:") for p in self.problems):
            self.problem(1, 0, "no K: (key) field", (header_end, header_end, "K:C\n"))
        if not any(isinstance(item, _Element) and item.notes for item in self.items):
            self.problem(1, 0, "the tune has no notes")
        elif not isinstance(self.items[-1], _Bar) and self.last_music:
            line, col, offset = self.last_music
            self.problem(line, col, "the last bar is not closed", (offset, offset, "|]"))


def _expand(items: list) -> list[_Element]:
    """Play the repeats: |: ... :| twice, endings [1 [2 on their pass; each :| sends back once."""
    out: list[_Element] = []
    i, start, second, skipping, after_endings = 0, 0, False, False, False
    jumped: set[int] = set()
    while i < len(items):
        item = items[i]
        if isinstance(item, _Element):
            if not skipping:
                out.append(item)
        elif isinstance(item, _Ending):
            skipping = (2 if second else 1) not in item.passes
            after_endings = after_endings or (second and not skipping)
        else:
            if item.end_repeat:
                if skipping:
                    skipping = False
                elif not second and i not in jumped:
                    jumped.add(i)
                    i, second = start, True
                    continue
                else:
                    second, start = False, i + 1
            if item.double and after_endings:
                second, start, after_endings, skipping = False, i + 1, False, False
            if item.start_repeat:
                second, start, skipping = False, i + 1, False
        i += 1
    return out


def _timed(elements: list[_Element]) -> list[Note]:
    """Lay the elements end to end; a tied note absorbs the next note of its pitch that starts where it ends."""
    whole = 4 * TICKS_PER_BEAT
    notes: list[list] = []  # [start, end, pitch]
    open_ties: dict[int, list] = {}
    t = Fraction(0)
    for element in elements:
        ties: dict[int, list] = {}
        for pitch, length, tie in element.notes:
            held = open_ties.get(pitch)
            if held is not None and held[1] == t:
                held[1] = t + length
            else:
                held = [t, t + length, pitch]
                notes.append(held)
            if tie:
                ties[pitch] = held
        open_ties = ties
        t += element.advance
    out = [Note(round(s * whole), p, round(e * whole) - round(s * whole)) for s, e, p in notes]
    return sorted(n for n in out if n.duration > 0)


def _check(text: str) -> _Reader:
    if not isinstance(text, str):
        raise MusicError(f"ABC notation must be text, not {type(text).__name__}")
    return _Reader(text)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # a model's stray control bytes; some would split lines


def _without_controls(text: str) -> str:
    return _CONTROL.sub("", text.replace("\r\n", "\n"))


def validate_abc(text: str) -> list[str]:
    """Every problem in the notation, each as 'line L, column C: what'; empty when it is clean."""
    controls = len(_CONTROL.findall(text.replace("\r\n", "\n"))) if isinstance(text, str) else 0
    found = [f"{controls} control character{'s' if controls > 1 else ''} (dropped)"] if controls else []
    return found + [str(p) for p in _check(_without_controls(text) if controls else text).problems]


def _apply_fixes(text: str, reader: _Reader) -> str:
    fixes = [p.fix for p in reader.problems if p.fix] + reader.line_drops
    k_fix = next((f for f in fixes if f[2] == "K:C\n"), None)
    k_line = re.search(r"^K:", text, re.MULTILINE)
    before_k = k_fix[0] if k_fix else k_line.start() if k_line else None
    header = reader.fields
    missing = ("" if "M" in header else "M:4/4\n") + ("" if "L" in header else f"L:{_default_unit(reader.meter)}\n")
    if missing and before_k is not None:
        fixes.append((before_k, before_k, missing))
    rank = {"X": 0, "M": 1, "L": 1, "K": 2}  # header lines inserted at one place keep this order
    # At one offset: header lines in their order, then insertions, then the longest deletion.
    order = sorted(fixes, key=lambda f: (f[0], rank.get(f[2][:1], 3), f[1] > f[0], f[0] - f[1]))
    pieces, pos = [], 0
    for begin, end, replacement in order:
        if begin < pos:
            continue  # overlaps a fix already made
        pieces += [text[pos:begin], replacement]
        pos = end
    repaired = "".join(pieces) + text[pos:]
    return repaired if repaired.endswith("\n") else repaired + "\n"


def _repaired(text: str) -> tuple[str, _Reader]:
    reader = _check(text)
    text = _without_controls(text)
    reader = _Reader(text)
    for _ in range(8):
        if not any(p.fix for p in reader.problems) and "M" in reader.fields and "L" in reader.fields:
            break
        text = _apply_fixes(text, reader)
        reader = _Reader(text)
    return text, reader


def repair_abc(text: str) -> str:
    """The notation with the obvious fixes made: unclosed chords and fields closed, stray characters
    dropped, "C#" written "^C", a final bar line added, and a header with X:, M:, L: and K: (defaults
    1, 4/4, 1/8, C). Problems with no obvious fix (a tune without notes) are left for parse_abc."""
    return _repaired(text)[0]


def parse_abc(text: str, *, repair: bool = True) -> Tune:
    """Read a tune. With repair (the default) the text is first repaired as repair_abc does; without,
    the first problem raises MusicError. A tune without notes always raises."""
    reader = _repaired(text)[1] if repair else _check(text)
    if reader.problems:
        raise MusicError(f"ABC {reader.problems[0]}")
    key = reader.first_key or reader.key
    return Tune(
        notes=_timed(_expand(reader.items)),
        ticks_per_beat=TICKS_PER_BEAT,
        tempo=reader.tempo,
        meter=reader.meter,
        key=key.name,
        title=reader.title,
    )


def abc_to_midi(text: str, *, repair: bool = True) -> bytes:
    """ABC notation to the bytes of a .mid file (see parse_abc for `repair`)."""
    return parse_abc(text, repair=repair).to_midi()
