"""Interactive API docs (Swagger UI 5) from local assets: the files the ``fastapi-offline`` wheel ships.

No CDN: production networks often have no internet.  Swagger UI 5 because the
schema is OpenAPI 3.1 (FastAPI's), which Swagger UI 4 refuses to render.  The
page loads its initialiser from a file too, and Swagger UI sets its styles
through the DOM (never inline ``<style>`` or ``style=""`` markup), so the
app's strict Content-Security-Policy holds here unchanged, as everywhere
(``tests/test_dashboard.py`` checks the page in a browser for violations).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

#: Where the Swagger UI files are served.
ASSETS_PATH = "/api/docs/assets"

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tradeflow API</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon.png"></head>
<body><div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="/api/docs/init.js"></script></body></html>
"""

_INIT = """window.ui = SwaggerUIBundle({url: %r, dom_id: "#swagger-ui", deepLinking: true,
  persistAuthorization: false, tryItOutEnabled: true});
"""


def install(app: FastAPI, *, openapi_url: str) -> None:
    """Serve the docs page at ``/api/docs`` with its assets and initialiser."""
    from importlib.resources import files

    swagger_ui_path = str(files("fastapi_offline") / "static")
    app.mount(ASSETS_PATH, StaticFiles(directory=swagger_ui_path), name="swagger-ui-assets")

    @app.get("/api/docs", include_in_schema=False)
    def docs_page() -> HTMLResponse:
        return HTMLResponse(_PAGE.format(assets=ASSETS_PATH))

    @app.get("/api/docs/init.js", include_in_schema=False)
    def docs_init() -> Response:
        return Response(_INIT % openapi_url, media_type="application/javascript")
