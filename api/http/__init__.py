"""The HTTP API (FastAPI on uvicorn): ``create_app`` builds it, ``serve`` runs it.  See docs/api.md."""

from .access import PERMISSIONS, ROLE_RANK, Principal, require
from .app import OPENAPI_URL, create_app
from .problems import PROBLEMS, Problem
from .server import serve, url_of

__all__ = [
    "OPENAPI_URL",
    "PERMISSIONS",
    "PROBLEMS",
    "ROLE_RANK",
    "Principal",
    "Problem",
    "create_app",
    "require",
    "serve",
    "url_of",
]
