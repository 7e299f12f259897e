"""The web dashboard: one HTML page at ``/`` and its static assets at ``/static/{name}``.

The page is plain HTML with a few ES modules (``static/js``) that call the JSON API
(``/v1/...``) with the key the user types once; charts use Chart.js, committed under
``static/vendor`` (no CDN, no build step). These two routes are the only ones served without
an API key (``@public``, see ``deps.owner_of``): they hold no user data. The HTML shell says
whether the server wants a key (``data-auth``) so the page asks for it before any API call.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from tunehouse.api import file_reports
from tunehouse.api.deps import State, public
from tunehouse.errors import NotFound

STATIC = Path(__file__).resolve().with_name("static")
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
               ".md": "text/plain; charset=utf-8", ".txt": "text/plain; charset=utf-8"}
# Scripts and styles from this origin only; the evaluation report (opened from a blob: URL,
# which inherits this policy) needs its inline <style> and data: images.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}

router = APIRouter(tags=["dashboard"], include_in_schema=False)
router.include_router(file_reports.router)  # the validation reports the page shows


@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
@public
def index(state: State) -> HTMLResponse:
    """The page shell; ``data-auth="key"`` when ``TUNEHOUSE_API_KEYS`` is set."""
    auth = "key" if state.settings.api_keys else "none"
    html = (STATIC / "index.html").read_text(encoding="utf-8").replace("__AUTH__", auth)
    return HTMLResponse(html, headers=SECURITY_HEADERS)


@router.api_route("/static/{name:path}", methods=["GET", "HEAD"])
@public
def asset(name: str) -> FileResponse:
    """A file under ``static/`` with a known type; anything else (or outside it) is a 404."""
    path = (STATIC / name).resolve()
    media = MEDIA_TYPES.get(path.suffix)
    if STATIC not in path.parents or media is None or not path.is_file():
        raise NotFound(f"No dashboard asset '{name[:200]}'.", code="unknown_url")
    return FileResponse(path, media_type=media, headers=SECURITY_HEADERS)
