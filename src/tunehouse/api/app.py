"""build_app(): the FastAPI application, with every error mapped to OpenAI's envelope here.

Every failure leaves as ``{"error": {"message", "type", "param", "code"}}``: domain errors
(``tunehouse.errors``) with their own status, request validation errors as 400 naming the
field, unknown routes as 404, and anything unexpected as a 500 without a traceback. Every
route depends on the API-key check; on a loopback bind the Host header must be loopback too
(DNS-rebinding defence).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from tunehouse import __version__
from tunehouse.api.deps import AppState, ServerSettings, owner_of
from tunehouse.errors import TunehouseError, is_disk_full
from tunehouse.store import Database

log = logging.getLogger("tunehouse.api")
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def envelope(status: int, message: str, *, type: str = "invalid_request_error",
             param: str | None = None, code: str | None = None) -> JSONResponse:
    """OpenAI's error body."""
    return JSONResponse(status_code=status, content={"error": {
        "message": message, "type": type, "param": param, "code": code}})


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    """The first validation problem as a 400 naming the dotted field path in ``param``."""
    err = (exc.errors() or [{}])[0]
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    kind, msg = err.get("type", ""), str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if kind == "missing":
        return envelope(400, f"Missing required parameter: '{param}'.", param=param,
                        code="missing_required_parameter")
    if kind == "extra_forbidden":
        return envelope(400, f"Unrecognized request argument supplied: {param}", param=param,
                        code="unknown_parameter")
    if kind.startswith("json"):
        return envelope(400, "We could not parse the JSON body of your request: "
                        f"{msg}.", code="invalid_json")
    text = msg if param and param.split(".")[-1] in msg else f"Invalid '{param}': {msg}."
    return envelope(400, text, param=param, code="invalid_value")


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(TunehouseError)
    async def _domain(_: Request, exc: TunehouseError) -> JSONResponse:
        return envelope(exc.http_status, exc.message, type=exc.error_type, param=exc.param,
                        code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return envelope(404, f"Unknown request URL: {request.method} {request.url.path}.",
                            code="unknown_url")
        return envelope(exc.status_code, str(exc.detail), code=None)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        if is_disk_full(exc):  # e.g. SQLite "database or disk is full": 507, not a bare 500
            log.error("disk full: %s", exc)
            return envelope(507, "The server is out of disk space; nothing was stored. Retry "
                            "after space is freed.", type="server_error", code="disk_full")
        log.exception("unhandled error", exc_info=exc)
        return envelope(500, "The server had an error while processing your request.",
                        type="server_error", code="internal_error")


class GuardMiddleware:
    """Host-header check on loopback binds and a size cap on JSON bodies (pure ASGI)."""

    def __init__(self, app: ASGIApp, settings: ServerSettings):
        self.app, self.settings = app, settings
        self.check_host = settings.host in _LOOPBACK

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if self.check_host and name not in _LOOPBACK:
            resp = envelope(400, f"Host '{host[:100]}' is not allowed: the server is bound to "
                            f"{self.settings.host}.", code="invalid_host")
            await resp(scope, receive, send)
            return
        length = headers.get("content-length", "")
        if scope["path"] != "/v1/files" and length.isdigit() \
                and int(length) > self.settings.max_json_bytes:
            resp = envelope(413, f"Request body too large (max {self.settings.max_json_bytes} "
                            "bytes).", code="request_too_large")
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    holder = app.state.tunehouse.extras.get("engine")
    if holder is not None:  # stop the inference scheduler thread
        holder.close()


def build_app(settings: ServerSettings, db: Database | None = None) -> FastAPI:
    """The API application for ``settings`` (the database tables are created if missing)."""
    from tunehouse.api import chat, dashboard, files, fine_tuning, models

    db = db or Database(settings.database)
    db.create_all()
    docs = not settings.api_keys  # interactive docs only when the server is open anyway
    app = FastAPI(title="tunehouse", version=__version__, dependencies=[Depends(owner_of)],
                  docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None, lifespan=_lifespan)
    app.state.tunehouse = AppState(settings=settings, db=db)
    _install_handlers(app)
    for module in (files, fine_tuning, models, chat, dashboard):
        app.include_router(module.router)

    @app.get("/health", tags=["health"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "model": settings.base_id}

    app.add_middleware(GuardMiddleware, settings=settings)
    return app
