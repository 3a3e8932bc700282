"""Interactive API docs (Swagger UI) from local assets: the ``swagger-ui-bundle`` wheel's files.

No CDN: production networks often have no internet.  The page loads its
initialiser from a file too, so the strict Content-Security-Policy (no inline
script) holds here as everywhere.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

#: Where the Swagger UI files are served.
ASSETS_PATH = "/api/docs/assets"

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tradeflow API</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="/api/docs/init.js"></script></body></html>
"""

_INIT = """window.ui = SwaggerUIBundle({url: %r, dom_id: "#swagger-ui", deepLinking: true,
  persistAuthorization: false, tryItOutEnabled: true});
"""


def install(app: FastAPI, *, openapi_url: str) -> None:
    """Serve the docs page at ``/api/docs`` with its assets and initialiser."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(ASSETS_PATH, StaticFiles(directory=swagger_ui_path), name="swagger-ui-assets")

    @app.get("/api/docs", include_in_schema=False)
    def docs_page() -> HTMLResponse:
        return HTMLResponse(_PAGE.format(assets=ASSETS_PATH))

    @app.get("/api/docs/init.js", include_in_schema=False)
    def docs_init() -> Response:
        return Response(_INIT % openapi_url, media_type="application/javascript")
