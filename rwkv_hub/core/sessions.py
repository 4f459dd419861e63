"""Chat sessions that keep their recurrent state between turns, so turn 20 costs what turn 1 costs.

A session is a name, the state after its last turn, the state it started from (zeros, or a state-tuned
persona) and a few counters. Sessions can be forked (two continuations of one point), reset, deleted,
saved and restored: each is two files in the store's folder, `<id>.safetensors` (the state, via
`State.save`) and `<id>.json` (everything else), both written to a temporary file and renamed. A damaged
or foreign file found at start-up is reported in `problems` and skipped; it never stops the store.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .atomic import write_text
from .errors import RWKVHubError, StateError
from .state import State, StateShape

SESSION_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
META_FORMAT = "rwkv-hub-session/1"
MAX_TRANSCRIPT = 2000  # messages kept per session for display; the state holds everything regardless
log = logging.getLogger("rwkv_hub")


class SessionError(RWKVHubError):
    """No such session, a bad session id, a session already busy, or the store is full."""


@dataclass
class Session:
    id: str
    state: State
    initial: State | None  # a state-tuned starting point; None means zeros
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    turns: int = 0
    tokens: int = 0  # tokens the state has read
    transcript: list[dict] = field(default_factory=list)  # the turns' messages, {"role", "content"}, for display
    busy: bool = False  # a request is running on it
    previous: tuple | None = None  # (state, tokens, transcript, tail) before the last turn, for `rewind`
    # The last characters the state has read (a turn may end without its format's turn end: cut short by
    # max_tokens, cancelled, or stopped by another stop string), so the next turn can supply what is
    # missing; None when not known (a session saved before this was recorded).
    tail: str | None = None

    def info(self) -> dict:
        keys = ("id", "created", "updated", "turns", "tokens")
        return {k: getattr(self, k) for k in keys}


def load_tuned_state(path: str | os.PathLike, shape: StateShape) -> State:
    """Read a state-tuning file (official `.pth` with `blocks.{i}.att.time_state` per layer) as an initial state.

    RWKV-7 stores each layer's WKV state (H, N, N) the way the runtime indexes it; the token-shift parts
    start at zero.
    """
    p = Path(path)
    if not p.is_file():
        raise StateError(f"{p}: no such state file")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a file that is not a checkpoint
        raise StateError(f"{p}: not a readable state-tuning file ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict):
        raise StateError(f"{p}: not a state-tuning file (no tensors by name)")
    if shape.generation == "x040":
        raise StateError(f"{p}: RWKV-4 models have no state tuning (it came with RWKV-6)")
    want = shape.wkv_shape
    wkv = []
    for i in range(shape.n_layer):
        t = sd.get(f"blocks.{i}.att.time_state")
        if t is None:
            raise StateError(f"{p}: lacks blocks.{i}.att.time_state (the model has {shape.n_layer} layers)")
        if tuple(t.shape) != want:
            raise StateError(f"{p}: blocks.{i}.att.time_state has shape {tuple(t.shape)}, this model needs {want}")
        wkv.append(t.float().unsqueeze(0).contiguous())
    extra = sum(1 for k in sd if k.startswith("blocks.") and k.endswith("time_state")) - shape.n_layer
    if extra:
        raise StateError(f"{p}: has {shape.n_layer + extra} layers of state, this model has {shape.n_layer}")
    zeros = State.zeros(shape)
    return State(shape, zeros.att_x, wkv, zeros.ffn_x)


def prepare_folder(folder: str | os.PathLike) -> Path:
    """Make the sessions folder (private: conversations) or say why it cannot be used, before any work."""
    path = Path(folder)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as e:
        reason = e.strerror or str(e)
        raise SessionError(
            f"cannot keep sessions in {path}: {reason}; set session_folder in the config to a folder you can write"
        ) from None
    return path


class SessionStore:
    """Sessions by id, optionally persisted in `folder`; safe to use from several threads."""

    def __init__(self, shape: StateShape, folder: str | os.PathLike | None = None, max_sessions: int = 1000):
        self.shape = shape
        self.folder = Path(folder) if folder is not None else None
        self.max_sessions = max_sessions
        self.problems: list[str] = []
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        if self.folder is not None:
            prepare_folder(self.folder)
            self._restore()

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, sid: str) -> bool:
        return sid in self._sessions

    def create(self, sid: str | None = None, initial: State | None = None) -> Session:
        sid = sid or uuid.uuid4().hex[:12]
        _check_id(sid)
        if initial is not None and initial.shape != self.shape:
            raise StateError(f"the initial state is for a model with {initial.shape}, not {self.shape}")
        with self._lock:
            if sid in self._sessions:
                raise SessionError(f"session {sid!r} already exists")
            if len(self._sessions) >= self.max_sessions:
                raise SessionError(f"there are already {self.max_sessions} sessions; delete some first")
            s = Session(sid, initial if initial is not None else State.zeros(self.shape), initial)
            self._sessions[sid] = s
        if initial is not None and self.folder is not None:
            initial.save(self.folder / f"{sid}.initial.safetensors")
        self._persist(s)
        return s

    def get(self, sid: str) -> Session:
        try:
            return self._sessions[sid]
        except KeyError:
            raise SessionError(f"no session {sid!r}") from None

    def list(self) -> list[dict]:
        return [s.info() for s in sorted(self._sessions.values(), key=lambda s: s.created)]

    def fork(self, sid: str, new_id: str | None = None) -> Session:
        """A new session that continues from where `sid` is now; the two then go their own ways."""
        src = self.get(sid)
        s = self.create(new_id, src.initial)
        s.state, s.turns, s.tokens, s.tail = src.state, src.turns, src.tokens, src.tail  # states never change in place
        s.transcript = list(src.transcript)
        self._persist(s)
        return s

    def reset(self, sid: str) -> Session:
        s = self.get(sid)
        s.state = s.initial if s.initial is not None else State.zeros(self.shape)
        s.turns, s.tokens, s.transcript, s.previous, s.tail, s.updated = 0, 0, [], None, None, time.time()
        self._persist(s)
        return s

    def delete(self, sid: str) -> None:
        with self._lock:
            s = self._sessions.pop(sid, None)
        if s is None:
            raise SessionError(f"no session {sid!r}")
        if self.folder is not None:
            for suffix in (".json", ".safetensors", ".initial.safetensors"):
                (self.folder / f"{sid}{suffix}").unlink(missing_ok=True)

    def acquire(self, sid: str) -> Session:
        """Mark a session busy for one request; a second request on it is refused until `release`."""
        s = self.get(sid)
        with self._lock:
            if s.busy:
                raise SessionError(f"session {sid!r} is busy with another request")
            s.busy = True
        return s

    def release(
        self,
        s: Session,
        state: State | None = None,
        tokens: int = 0,
        messages: list[dict] = (),
        tail: str | None = None,
    ) -> None:
        """End a request on a session; with a state, the turn (its messages, and `tail`, the last text the
        state read) is kept and saved."""
        if state is not None:
            s.previous = (s.state, s.tokens, len(s.transcript), s.tail)
            s.state, s.turns, s.tokens, s.updated = state.to("cpu"), s.turns + 1, s.tokens + tokens, time.time()
            s.tail = tail
            s.transcript = (s.transcript + [dict(m) for m in messages])[-MAX_TRANSCRIPT:]
            self._persist(s)
        s.busy = False

    def rewind(self, sid: str) -> Session:
        """Undo the last turn: back to the state before it (kept in memory for one turn, not across restarts),
        so a reply can be regenerated without re-reading the conversation."""
        s = self.get(sid)
        with self._lock:
            if s.busy:
                raise SessionError(f"session {sid!r} is busy with another request")
            if s.previous is None:
                raise SessionError(f"session {sid!r} has no turn to take back")
            state, tokens, keep, tail = s.previous
            s.state, s.tokens, s.transcript, s.tail = state, tokens, s.transcript[:keep], tail
            s.turns, s.previous, s.updated = max(0, s.turns - 1), None, time.time()
        self._persist(s)
        return s

    def rename(self, sid: str, new_id: str) -> Session:
        """Give a session a new id (its files move with it)."""
        _check_id(new_id)
        with self._lock:
            if new_id in self._sessions:
                raise SessionError(f"session {new_id!r} already exists")
            s = self.get(sid)
            if s.busy:
                raise SessionError(f"session {sid!r} is busy with another request")
            del self._sessions[sid]
            s.id = new_id
            self._sessions[new_id] = s
        if self.folder is not None:
            init = self.folder / f"{sid}.initial.safetensors"
            if init.exists():
                os.replace(init, self.folder / f"{new_id}.initial.safetensors")
            self._persist(s)
            for suffix in (".json", ".safetensors"):
                (self.folder / f"{sid}{suffix}").unlink(missing_ok=True)
        return s

    # --- files -------------------------------------------------------------------------------------------

    def _persist(self, s: Session) -> None:
        if self.folder is None or s.id not in self._sessions:
            return
        s.state.save(self.folder / f"{s.id}.safetensors")
        meta = {"format": META_FORMAT, **s.info(), "transcript": s.transcript, "shape": asdict(self.shape)}
        if s.tail is not None:
            meta["tail"] = s.tail
        write_text(self.folder / f"{s.id}.json", json.dumps(meta), mode=0o600)  # a transcript is private

    def _restore(self) -> None:
        for meta_path in sorted(self.folder.glob("*.json")):
            sid = meta_path.stem
            try:
                meta = json.loads(meta_path.read_text())
                if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
                    raise StateError("not an rwkv-hub session file")
                if StateShape(**meta["shape"]) != self.shape:
                    raise StateError(f"it belongs to a model with {meta['shape']}")
                state = State.load(self.folder / f"{sid}.safetensors", self.shape)
                init_path = self.folder / f"{sid}.initial.safetensors"
                initial = State.load(init_path, self.shape) if init_path.exists() else None
                _check_id(sid)
                s = Session(sid, state, initial, meta["created"], meta["updated"], meta["turns"], meta["tokens"])
                s.transcript = [m for m in meta.get("transcript", []) if isinstance(m, dict)]
                s.tail = meta["tail"] if isinstance(meta.get("tail"), str) else None
            except (RWKVHubError, OSError, ValueError, KeyError, TypeError) as e:
                msg = f"session file {meta_path.name} skipped: {e}"
                self.problems.append(msg)
                log.warning(msg)
                continue
            self._sessions[sid] = s


def _check_id(sid: str) -> None:
    if not isinstance(sid, str) or not SESSION_ID.match(sid) or sid.startswith("."):
        raise SessionError(f"bad session id {sid!r}: use 1-64 letters, digits, '_', '-' or '.'")
