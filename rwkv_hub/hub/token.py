"""The daemon's bearer token: made on first start, kept owner-only in the config folder.

Every endpoint except health requires it, so another user or a web page on the same machine cannot
drive the model. `RWKV_HUB_TOKEN` or `--token` sets it explicitly; the CLI and the client find the file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ..core.atomic import write_text
from ..core.errors import RWKVHubError
from .config import config_dir

ENV = "RWKV_HUB_TOKEN"


def token_path() -> Path:
    return config_dir() / "token"


def get_token(explicit: str | None = None, create: bool = True) -> str | None:
    """The token to use: explicit, else $RWKV_HUB_TOKEN, else the file (made now if `create`)."""
    if explicit:
        return explicit
    if os.environ.get(ENV):
        return os.environ[ENV]
    p = token_path()
    if p.exists():
        try:
            token = p.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise RWKVHubError(f"cannot read the token file {p}: {e}; delete it to have a new one made") from None
        if not token:
            raise RWKVHubError(f"the token file {p} is empty; delete it to have a new one made")
        return token
    if not create:
        return None
    p.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    write_text(p, token + "\n", mode=0o600)
    return token
