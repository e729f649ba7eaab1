"""The dashboard's pages (``/ui/``): one HTML page for every view's URL, so each view
is bookmarkable and a reload lands where it was, and the static files beside it
(``ui/static/``: our scripts and styles, the vendored graph library). No build step
and nothing from the internet; the page reads the API like any client.

The page is read once, when the app is built: a request never waits on the disk for
it. Scripts are only ours (Content-Security-Policy ``script-src 'self'``): manifests
are user input, and a value that slipped past escaping still could not run.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

UI = Path(__file__).resolve().parent / "ui"
PAGES = ("/ui/", "/ui/capabilities", "/ui/capabilities/{namespace}", "/ui/services",
         "/ui/graph", "/ui/sync")
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' "
                               "'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_routes(app: FastAPI) -> None:
    page = (UI / "index.html").read_bytes()

    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=HEADERS)

    for path in PAGES:
        app.add_api_route(path, index, methods=["GET"], include_in_schema=False)

    async def to_overview() -> Response:
        return RedirectResponse("/ui/", status_code=307)

    for path in ("/", "/ui"):  # where a person types the address
        app.add_api_route(path, to_overview, methods=["GET"], include_in_schema=False)

    app.mount("/ui/static", StaticFiles(directory=UI / "static"), name="ui-static")
