"""Server settings, per-app state and the ``Annotated`` dependencies every route uses.

``Owner`` is the caller's identity: a hash of its API key when ``TUNEHOUSE_API_KEYS`` is set
(every route depends on it, so a missing or wrong key is a 401 everywhere), else ``""``.
Every query is scoped by it; another key's objects answer 404 exactly like missing ones.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from tunehouse.errors import InvalidConfig, Unauthorized
from tunehouse.store import Database

DEFAULT_MAX_UPLOAD = 512 * 1024 * 1024


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidConfig(f"{name} must be an integer number of bytes, got {raw!r}") from None
    if value < 1:
        raise InvalidConfig(f"{name} must be >= 1, got {value}")
    return value


@dataclass
class ServerSettings:
    base_model: str  # the --model value: an embedded name or a model directory
    database: str | None = None  # database URL (default: SQLite under $TUNEHOUSE_HOME)
    api_keys: tuple[str, ...] = ()  # from TUNEHOUSE_API_KEYS; empty: no auth
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD  # TUNEHOUSE_MAX_UPLOAD_BYTES
    max_attempts: int = 3  # failed attempts before a job fails with max_attempts_exceeded
    max_concurrent_chats: int = 32  # chat requests in flight before 429
    max_json_bytes: int = 32 * 1024 * 1024  # JSON request bodies
    host: str = "127.0.0.1"  # bind address; loopback binds also check the Host header

    @property
    def base_id(self) -> str:
        """The base model's public id: its name, or a directory's base name."""
        path = Path(self.base_model).expanduser()
        return path.name if path.is_dir() else self.base_model

    @classmethod
    def from_env(cls, base_model: str, **kwargs: Any) -> ServerSettings:
        keys = tuple(k.strip() for k in os.environ.get("TUNEHOUSE_API_KEYS", "").split(",")
                     if k.strip())
        return cls(base_model=base_model, api_keys=keys,
                   max_upload_bytes=_env_int("TUNEHOUSE_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD),
                   **kwargs)


@dataclass
class AppState:
    settings: ServerSettings
    db: Database
    extras: dict[str, Any] = field(default_factory=dict)  # lazily built objects (the engine)

    def is_base(self, model: str) -> bool:
        return model in (self.settings.base_id, self.settings.base_model)


def get_state(request: Request) -> AppState:
    return request.app.state.tunehouse


def public(endpoint: Any) -> Any:
    """Mark a route as served without an API key (the allowlist in ``owner_of``)."""
    endpoint.tunehouse_public = True
    return endpoint


def owner_of(request: Request) -> str:
    """The caller's owner id; raises ``Unauthorized`` (401) when keys are set and it has none.

    Allowlist: only routes marked ``@public`` answer without a key, and those are the web
    dashboard's HTML shell (``GET /``) and its static assets (``GET /static/{name}``, see
    ``api/dashboard.py``). They hold no user data: the page asks for the key and sends it as
    ``Authorization: Bearer`` to the JSON API, where every route still needs it.
    """
    keys = get_state(request).settings.api_keys
    if not keys or getattr(request.scope.get("endpoint"), "tunehouse_public", False):
        return ""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    valid = scheme.lower() == "bearer" and token and any(
        hmac.compare_digest(token.encode(), k.encode()) for k in keys)
    if not valid:
        raise Unauthorized("Incorrect or missing API key. Send 'Authorization: Bearer <key>' "
                           "with one of the keys in TUNEHOUSE_API_KEYS.")
    return hashlib.sha256(token.encode()).hexdigest()[:32]


State = Annotated[AppState, Depends(get_state)]
Owner = Annotated[str, Depends(owner_of)]
