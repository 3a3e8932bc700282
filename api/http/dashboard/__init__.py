"""The web dashboard: server-rendered pages (Jinja2) at ``/`` over the public API, with
small local scripts and styles (no CDN, no build step).  See docs/dashboard.md.

``install(app)`` mounts it on an app that :func:`api.http.create_app` built.
"""

from .pages import STATIC_URL, install

__all__ = ["STATIC_URL", "install"]
