"""``/playground``: a page to try the server by hand: a prompt, a slider per served reward,
budget / algorithm / τ / early rejection, and every candidate ranked with its scores.

Static files shipped in the package (no build step, no CDN: servers often have no internet).
It is behind the same API keys as ``/v1``: a request without a valid key gets a small form
that stores the key in a cookie scoped to ``/playground``; the page then sends it as a bearer
token to ``/v1`` (which accepts only the header, so the cookie cannot be used cross-site).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from iama_server.auth import PLAYGROUND_COOKIE, bearer

ASSETS = {
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
# The page is ours and loads nothing from elsewhere: say so to the browser.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

router = APIRouter(prefix="/playground", include_in_schema=False)


def _asset(name: str) -> str:
    return resources.files("iama_server").joinpath("static", "playground", name).read_text(encoding="utf-8")


def _authorised(request: Request) -> bool:
    token = bearer(request.headers.get("authorization", "")) or request.cookies.get(PLAYGROUND_COOKIE, "")
    return request.app.state.iama.keys.lookup(token) is not None


@router.get("", response_class=HTMLResponse)
async def page(request: Request) -> Response:
    if not _authorised(request):
        return HTMLResponse(_asset("key.html"), status_code=401, headers=_HEADERS)
    return HTMLResponse(_asset("index.html"), headers=_HEADERS)


@router.get("/{name}")
async def asset(name: str, request: Request) -> Response:
    if name == "key.js":  # the key form's own script: needed before there is a key
        return Response(_asset(name), media_type=ASSETS["playground.js"], headers=_HEADERS)
    if name not in ASSETS:
        return Response("not found", status_code=404, media_type="text/plain")
    if not _authorised(request):
        return Response("missing or invalid API key", status_code=401, media_type="text/plain")
    return Response(_asset(name), media_type=ASSETS[name], headers=_HEADERS)
