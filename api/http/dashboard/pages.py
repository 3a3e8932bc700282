"""The dashboard's pages: one Jinja2 shell per page; the page's script reads the public API.

A page answers only to a browser session (the cookie ``POST /api/v1/session`` sets); without
one it redirects to the login page.  The role of the session's key decides which action
buttons the page has (the API refuses what the role does not hold in any case).
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from ..access import ROLE_RANK, Principal, authenticate_request
from ..context import context_of
from ..problems import Problem

logger = logging.getLogger(__name__)

#: Where the dashboard's scripts, styles and vendored libraries are served.
STATIC_URL = "/static"

#: The directory of this package: its ``templates/`` and ``static/``.
HERE = Path(__file__).parent

#: The pages: path -> (template, title, navigation label or None).
PAGES = {
    "/": ("overview.html", "Overview", "Overview"),
    "/jobs": ("jobs.html", "Jobs", "Jobs"),
    "/dead-letters": ("dead_letters.html", "Dead letters", "Dead letters"),
    "/schedules": ("schedules.html", "Schedules", "Schedules"),
    "/workflows": ("workflows.html", "Workflows", "Workflows"),
    "/queues": ("queues.html", "Queues and workers", "Queues"),
}

templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)


def _principal(request: Request) -> Principal | None:
    """The session's principal, or None (no cookie, expired, revoked: log in again)."""
    if not request.cookies:
        return None
    try:
        principal = authenticate_request(request, context_of(request))
    except Problem:
        return None
    return principal if principal.via_session else None


def _render(request: Request, template: str, title: str, **extra) -> Response:
    principal = _principal(request)
    if principal is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    settings = context_of(request).settings
    rank = ROLE_RANK[principal.role]
    context = {
        "title": title,
        "principal": principal,
        "can_operate": rank >= ROLE_RANK["operator"] and not settings.api_read_only,
        "can_admin": rank >= ROLE_RANK["admin"] and not settings.api_read_only,
        "environment": settings.dashboard_environment,
        "jaeger_url": settings.dashboard_jaeger_url or "",
        "service_name": settings.tracing_service_name,
        "nav": [(path, label) for path, (_, _, label) in PAGES.items()],
        "current": request.url.path,
        "static": STATIC_URL,
        **extra,
    }
    response = templates.TemplateResponse(request, template, context)
    response.headers["Cache-Control"] = "no-store"
    return response


def _page(path: str):
    template, title, _ = PAGES[path]

    def page(request: Request) -> Response:
        return _render(request, template, title)

    page.__name__ = f"page_{template.removesuffix('.html')}"
    return page


for _path in PAGES:
    router.add_api_route(_path, _page(_path), methods=["GET"], response_class=HTMLResponse)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> Response:
    return _render(request, "job.html", f"Job {job_id}", job_id=job_id)


@router.get("/workflows/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str) -> Response:
    return _render(request, "run.html", f"Run {run_id}", run_id=run_id)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    settings = context_of(request).settings
    context = {"title": "Log in", "environment": settings.dashboard_environment, "static": STATIC_URL}
    return templates.TemplateResponse(request, "login.html", context)


def install(app: FastAPI) -> None:
    """Serve the dashboard's pages and assets from ``app``."""
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=HERE / "static"), name="dashboard-static")
