"""The settings of this process, remembered once by :func:`actors.runtime.configure`.

Code that runs inside actors (lazily, at call time) reads the settings the
process was started with from here instead of importing the ``actors``
package, so nothing below ``actors/__init__`` imports it back.
"""

from __future__ import annotations

from actors.settings import Settings

#: The settings the process's global broker was built from; ``None`` until then.
_settings: Settings | None = None


def remember(settings: Settings) -> None:
    """Keep ``settings`` as this process's (called by :func:`actors.runtime.configure`)."""
    global _settings
    _settings = settings


def process_settings() -> Settings:
    """The settings this process's global broker was built from (``import actors`` sets them)."""
    if _settings is None:
        raise RuntimeError("no tradeflow broker is configured in this process: `import actors` first")
    return _settings
